"""Validate one `helm template` render of the chart.

Built-in kinds go through the Kubernetes OpenAPI schemas that kubernetes-validate
ships, in strict mode (unknown fields are errors), for each requested Kubernetes
version. Custom resources go through validators generated from their CRDs (see
crds.mjs). Then the chart's own promises are checked on the rendered objects:
secrets only by reference, the hardened security context, a writable /tmp, a
termination grace period above SHUTDOWN_GRACE_SECONDS, and scalers, Service and
PodDisruptionBudget pointing at the Deployment.

usage: check_manifests.py RENDERED.yaml --node-modules DIR [--kube-version V ...]
Prints one summary line; exits 1 with the problems listed when any is found.
"""

# ruff: noqa: INP001, T201 - a standalone CI script that prints its verdict

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
SECRET_ENV = ("INKEEP_API_KEY", "KAFKA_SASL_PASSWORD")
WRITABLE = "/tmp"  # noqa: S108 - the one writable path the image expects
PROBES = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
NODE = shutil.which("node") or "node"
HERE = Path(__file__).resolve().parent


def load(path: str) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def name_of(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def check_builtin(docs: list[dict[str, Any]], versions: list[str]) -> list[str]:
    problems = []
    for version in versions:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.absolute_path)
                problems.append(f"{name_of(doc)} (Kubernetes {version}) at {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name_of(doc)}: {e.message}")
    return problems


def check_custom(docs: list[dict[str, Any]], node_modules: str) -> list[str]:
    if not docs:
        return []
    run = subprocess.run(  # noqa: S603 - our own validator script, fixed arguments
        [NODE, str(HERE / "crds.mjs"), node_modules],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        return [f"CRD validator failed: {run.stderr.strip()}"]
    return list(json.loads(run.stdout))


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def check_env(pod: dict[str, Any], worker: dict[str, Any]) -> list[str]:
    problems = []
    names = [e["name"] for e in worker.get("env", [])]
    problems += [f"env {n} is set twice" for n in sorted({n for n in names if names.count(n) > 1})]
    env = env_of(worker)
    for name in SECRET_ENV:
        if name in env and "secretKeyRef" not in env[name].get("valueFrom", {}):
            problems.append(f"env {name} must come from a Secret (secretKeyRef), not a value")
    if "INKEEP_API_KEY" not in env:
        problems.append("env INKEEP_API_KEY is missing")
    if not env.get("KAFKA_BOOTSTRAP_SERVERS", {}).get("value"):
        problems.append("env KAFKA_BOOTSTRAP_SERVERS is missing or empty")
    grace = float(env.get("SHUTDOWN_GRACE_SECONDS", {}).get("value", "25"))
    period = pod.get("terminationGracePeriodSeconds", 30)
    if not period > grace:
        problems.append(
            f"terminationGracePeriodSeconds {period} must exceed SHUTDOWN_GRACE_SECONDS {grace}"
        )
    return problems


def check_security(pod: dict[str, Any], worker: dict[str, Any]) -> list[str]:
    sc = worker.get("securityContext", {})
    psc = pod.get("securityContext", {})
    wanted = {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
    }
    problems = [
        f"container securityContext.{key} must be {value}"
        for key, value in wanted.items()
        if sc.get(key) != value
    ]
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        problems.append("container securityContext must drop ALL capabilities")
    seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
    if seccomp.get("type") != "RuntimeDefault":
        problems.append("seccompProfile must be RuntimeDefault")
    if (sc.get("runAsUser") or psc.get("runAsUser")) == 0:
        problems.append("must not run as uid 0")
    return problems


def check_mounts_and_probes(pod: dict[str, Any], worker: dict[str, Any]) -> list[str]:
    problems = []
    mounts = {m["mountPath"]: m["name"] for m in worker.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if "emptyDir" not in volumes.get(mounts.get(WRITABLE, ""), {}):
        problems.append(f"{WRITABLE} must be an emptyDir mount (the root filesystem is read-only)")
    cafile = env_of(worker).get("KAFKA_SSL_CAFILE", {}).get("value")
    if cafile and not any(cafile.startswith(path + "/") for path in mounts):
        problems.append(f"KAFKA_SSL_CAFILE {cafile} is not under any volume mount")
    for probe, path in PROBES.items():
        got = worker.get(probe, {}).get("httpGet", {}).get("path")
        if got != path:
            problems.append(f"{probe} must GET {path}, not {got}")
    if worker.get("args") != ["run"]:
        problems.append(f'worker args must be ["run"], not {worker.get("args")}')
    return problems


def check_deployment(dep: dict[str, Any]) -> list[str]:
    pod = dep["spec"]["template"]["spec"]
    workers = [c for c in pod["containers"] if c["name"] == "worker"]
    if len(workers) != 1:
        return ["Deployment: expected exactly one container named worker"]
    return (
        check_env(pod, workers[0])
        + check_security(pod, workers[0])
        + check_mounts_and_probes(pod, workers[0])
    )


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(docs: list[dict[str, Any]], dep: dict[str, Any]) -> list[str]:
    problems = []
    name = dep["metadata"]["name"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    if not selects(dep["spec"]["selector"]["matchLabels"], pod_labels):
        problems.append("Deployment selector does not match its pod labels")
    kinds = {d["kind"] for d in docs}
    if {"HorizontalPodAutoscaler", "ScaledObject"} <= kinds:
        problems.append("an HPA and a KEDA ScaledObject must not both scale the Deployment")
    for doc in docs:
        kind, spec = doc["kind"], doc.get("spec", {})
        if kind in {"HorizontalPodAutoscaler", "ScaledObject"}:
            if spec["scaleTargetRef"]["name"] != name:
                problems.append(f"{name_of(doc)} scales {spec['scaleTargetRef']['name']}")
            if "replicas" in dep["spec"]:
                problems.append(f"Deployment sets replicas while {kind} scales it")
        if kind == "Service" and not selects(spec.get("selector", {}), pod_labels):
            problems.append(f"{name_of(doc)} selects no worker pod")
        if kind == "PodDisruptionBudget" and not selects(
            spec["selector"].get("matchLabels", {}), pod_labels
        ):
            problems.append(f"{name_of(doc)} selects no worker pod")
        if kind == "ScaledObject":
            refs = {
                t["authenticationRef"]["name"] for t in spec["triggers"] if "authenticationRef" in t
            }
            known = {d["metadata"]["name"] for d in docs if d["kind"] == "TriggerAuthentication"}
            problems += [
                f"{name_of(doc)} refers to missing TriggerAuthentication {r}" for r in refs - known
            ]
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests")
    parser.add_argument("--node-modules", required=True)
    parser.add_argument("--kube-version", action="append", required=True)
    args = parser.parse_args(argv)

    docs = load(args.manifests)
    custom = [d for d in docs if d.get("apiVersion", "").startswith(CUSTOM_GROUPS)]
    builtin = [d for d in docs if d not in custom]
    deployments = [d for d in docs if d.get("kind") == "Deployment"]

    problems = check_builtin(builtin, args.kube_version)
    problems += check_custom(custom, args.node_modules)
    if len(deployments) != 1:
        problems.append(f"expected one Deployment, found {len(deployments)}")
    else:
        problems += check_deployment(deployments[0])
        problems += check_references(docs, deployments[0])

    if problems:
        for problem in problems:
            print(f"  - {problem}")
        return 1
    kinds = ", ".join(sorted({d["kind"] for d in docs}))
    print(
        f"{len(builtin)} built-in objects strict-valid on Kubernetes "
        f"{'/'.join(args.kube_version)}; {len(custom)} custom resources valid on their CRD "
        f"schemas; chart policy holds ({kinds})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
