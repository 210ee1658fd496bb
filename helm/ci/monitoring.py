"""Pull the alert rules and the dashboard out of one `helm template` render.

usage: monitoring.py rules RENDERED.yaml OUT.yaml      the PrometheusRule's groups, as a
                                                      rule file for promtool
       monitoring.py dashboard RENDERED.yaml OUT.json  the dashboard ConfigMap's JSON
       monitoring.py runbooks RULES.yaml OPERATIONS.md each alert's runbook_url anchor
                                                      names a heading of the runbook
Prints one summary line; exits 1 with the problem when something is missing.
"""

# ruff: noqa: INP001, T201 - a standalone CI script that prints its verdict

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml


def load(path: str) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        sys.exit(f"expected one {kind} in the render, found {len(found)}")
    return found[0]


def rules(rendered: str, out: str) -> None:
    groups = only(load(rendered), "PrometheusRule")["spec"]["groups"]
    Path(out).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    alerts = [r["alert"] for g in groups for r in g["rules"] if "alert" in r]
    print(f"{len(alerts)} alerts: {', '.join(alerts)}")


def dashboard(rendered: str, out: str) -> None:
    configmap = only(load(rendered), "ConfigMap")
    labels = configmap["metadata"].get("labels", {})
    if labels.get("grafana_dashboard") != "1":
        sys.exit('the dashboard ConfigMap lacks the Grafana sidecar label grafana_dashboard: "1"')
    (text,) = configmap["data"].values()
    Path(out).write_text(text, encoding="utf-8")
    print(f"{configmap['metadata']['name']}: {len(text)} bytes of dashboard JSON")


def slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbooks(rules_file: str, doc: str) -> None:
    text = Path(doc).read_text(encoding="utf-8")
    anchors = {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}
    groups = yaml.safe_load(Path(rules_file).read_text(encoding="utf-8"))["groups"]
    problems = []
    count = 0
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        url = rule.get("annotations", {}).get("runbook_url", "")
        anchor = url.partition("#")[2]
        count += 1
        if anchor not in anchors:
            problems.append(f"{rule['alert']}: runbook_url {url!r} names no heading of {doc}")
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"{count} runbook links name a heading of {Path(doc).name}")


def main(argv: list[str]) -> None:
    commands = {"rules": rules, "dashboard": dashboard, "runbooks": runbooks}
    if len(argv) != 3 or argv[0] not in commands:
        sys.exit(__doc__)
    commands[argv[0]](argv[1], argv[2])


if __name__ == "__main__":
    main(sys.argv[1:])
