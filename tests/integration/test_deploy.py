"""The deployment checks pass on the repository and catch each kind of break.

Each break is made in a scratch copy of the deployment files; the check meant to
catch it must fail, and every other check must still pass, so a check that
passes everything (or fails everything) is caught too. The tools are installed
by the script itself into its cache (minutes once, seconds after).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from harness import REPO

SCRIPT = REPO / ".ci" / "deploy-checks"
COPIED = (
    "Dockerfile",
    ".dockerignore",
    "docker-compose.yml",
    "helm",
    ".ci/deploy-checks",
    "docs/operations.md",
)

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("go", "node", "npm")),
    reason="the deployment checks build their tools with go and npm",
)


def run_checks(script: Path) -> tuple[int, str, dict[str, str]]:
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode == 2:
        pytest.fail(f"tool installation failed:\n{done.stdout}\n{done.stderr}")
    lines = re.finditer(
        r"^(?P<verdict>PASS|FAIL)  (?P<name>.+?)(?: — .*)?$", done.stdout, re.MULTILINE
    )
    verdicts = {m["name"]: m["verdict"] for m in lines}
    return done.returncode, done.stdout, verdicts


def scratch_copy(tmp_path: Path) -> Path:
    for name in COPIED:
        source, target = REPO / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    return tmp_path


class Break(NamedTuple):
    file: str
    old: str
    new: str
    checks: tuple[str, ...]  # the checks that must fail, and only they
    says: str | tuple[str, ...]  # what each of them must print (one, or one per check)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


CHART = "helm/inkeep-conversation-consumer"
VALUES_FILES = ("hpa", "keda-servicemonitor", "minimal", "monitoring", "sasl-tls")
ALERTS_TEST = "alerts: promtool test rules helm/ci/promtool/alerts.test.yaml"
DASHBOARD = "dashboard: strict Grafana decoding, every panel query parses"

BREAKS = {
    "dockerfile-lint": Break(
        "Dockerfile",
        "WORKDIR /tmp\n",
        "WORKDIR /tmp\nRUN apt-get update && apt-get install -y curl\n",
        ("hadolint Dockerfile",),
        "DL3008",
    ),
    "dockerignore-drops-a-copied-source": Break(
        ".dockerignore",
        "!consumer/\n",
        "",
        ("Dockerfile COPY vs .dockerignore",),
        "COPY consumer",
    ),
    "compose-unknown-dependency": Break(
        "docker-compose.yml",
        "      emulator:\n        condition: service_healthy",
        "      emulater:\n        condition: service_healthy",
        ("compose: profile demo",),
        "emulater",
    ),
    "values-outside-schema": Break(
        "helm/ci/sasl-tls.yaml",
        "  tag: 0.1.0\n",
        "  tag: 0.1.0\n  pullPolicy: Sometimes\n",
        ("helm lint --strict helm/ci/sasl-tls.yaml", "helm template helm/ci/sasl-tls.yaml"),
        "pullPolicy",
    ),
    "writable-root-filesystem": Break(
        "helm/ci/minimal.yaml",
        "apiKey:\n",
        "securityContext:\n  readOnlyRootFilesystem: false\napiKey:\n",
        ("helm template helm/ci/minimal.yaml",),
        "readOnlyRootFilesystem must be True",
    ),
    "kubernetes-schema": Break(
        f"{CHART}/templates/hpa.yaml",
        "minReplicas: {{ .Values.autoscaling.minReplicas }}",
        "minReplicas: {{ .Values.autoscaling.minReplicas | quote }}",
        ("helm template helm/ci/hpa.yaml",),
        "minReplicas",
    ),
    "crd-schema": Break(
        f"{CHART}/templates/keda.yaml",
        "lagThreshold: {{ .Values.keda.lagThreshold | quote }}",
        "lagThreshold: {{ .Values.keda.lagThreshold }}",
        ("helm template helm/ci/keda-servicemonitor.yaml",),
        "lagThreshold must be string",
    ),
    "grace-period-not-above-shutdown-grace": Break(
        f"{CHART}/templates/deployment.yaml",
        '{{ include "consumer.terminationGracePeriodSeconds" . }}',
        "{{ .Values.shutdown.graceSeconds }}",
        tuple(f"helm template helm/ci/{name}.yaml" for name in VALUES_FILES),
        "must exceed SHUTDOWN_GRACE_SECONDS",
    ),
    "alert-fires-on-a-healthy-worker": Break(
        f"{CHART}/templates/prometheusrule.yaml",
        "(inkeep_consumer_auth_failing{ {{- $sel -}} }) == 1",
        "(inkeep_consumer_auth_failing{ {{- $sel -}} }) >= 0",
        (ALERTS_TEST,),
        "alertname: InkeepConsumerApiKeyRefused",
    ),
    "lag-alert-counts-a-moved-partition-twice": Break(
        f"{CHART}/templates/prometheusrule.yaml",
        "(max by (namespace, topic, partition) (inkeep_consumer_consumer_lag{ {{- $sel -}} }))",
        "(inkeep_consumer_consumer_lag{ {{- $sel -}} })",
        (ALERTS_TEST,),
        "alertname: InkeepConsumerLagGrowing",
    ),
    "alert-expression-does-not-parse": Break(
        f"{CHART}/templates/prometheusrule.yaml",
        "(increase(inkeep_consumer_offset_commits_failed_total{ {{- $sel -}} }[15m]))",
        "(increase(inkeep_consumer_offset_commits_failed_total{ {{- $sel -}} }[15 minutes]))",
        ("alerts: promtool check rules (helm/ci/monitoring.yaml)", ALERTS_TEST),
        "InkeepConsumerCommitsFailing",
    ),
    "prometheusrule-crd-schema": Break(
        f"{CHART}/templates/prometheusrule.yaml",
        "summary: The consumer group refuses offset commits.",
        "summary: The consumer group refuses offset commits.\n            priority: [1]",
        (
            "helm template helm/ci/monitoring.yaml",
            "alerts: promtool check rules (helm/ci/monitoring.yaml)",
            ALERTS_TEST,
        ),
        (
            "annotations/priority must be string",
            "cannot unmarshal !!seq into string",
            "cannot unmarshal !!seq into string",
        ),
    ),
    "runbook-section-missing": Break(
        "docs/operations.md",
        "### InkeepConsumerDeadLetters\n",
        "### Dead letters\n",
        ("alerts: every runbook_url names a heading of docs/operations.md",),
        "InkeepConsumerDeadLetters: runbook_url",
    ),
    "dashboard-unknown-field": Break(
        f"{CHART}/files/dashboard.json",
        '"graphTooltip": 1,',
        '"graphTooltip": 1,\n  "graphTooltp": 1,',
        (DASHBOARD,),
        "unexpected field 'graphTooltp'",
    ),
    "dashboard-query-does-not-parse": Break(
        f"{CHART}/files/dashboard.json",
        '"expr": "sum by (topic) (rate(',
        '"expr": "sum by (topic) (rat(',
        (DASHBOARD,),
        'unknown function with name "rat"',
    ),
}


def test_repository_passes_every_check():
    code, out, verdicts = run_checks(SCRIPT)
    assert code == 0, out
    assert verdicts, out
    assert set(verdicts.values()) == {"PASS"}, out
    assert re.search(r"^deploy-checks: all \d+ checks passed", out, re.MULTILINE), out


def section(out: str, check: str) -> str:
    """What the script printed under the FAIL line of `check`."""
    after = out.split(f"FAIL  {check}\n", 1)[1]
    return re.split(r"^(?:PASS|FAIL)  |^deploy-checks: ", after, maxsplit=1, flags=re.MULTILINE)[0]


@pytest.mark.parametrize("name", BREAKS)
def test_break_is_caught_by_its_check(tmp_path, name):
    broken = BREAKS[name]
    root = scratch_copy(tmp_path)
    edit(root / broken.file, broken.old, broken.new)

    code, out, verdicts = run_checks(root / ".ci" / "deploy-checks")

    assert code == 1, out
    failing = {check for check, verdict in verdicts.items() if verdict == "FAIL"}
    assert failing == set(broken.checks), out
    says = broken.says if isinstance(broken.says, tuple) else (broken.says,) * len(broken.checks)
    for check, said in zip(broken.checks, says, strict=True):
        assert said in section(out, check), out
