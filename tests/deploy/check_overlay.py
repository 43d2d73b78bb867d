"""Validates the DaemonSet's OTLP variant, a kustomize overlay of the base manifests; run by
tests/integration/otlp.rs.

usage: check_overlay.py DIR

- The base (the overlay's one resource) passes check_manifests.py's checks.
- The overlay's JSON patches apply to the base's DaemonSet (add and replace, as kustomize
  applies them), and the patched DaemonSet validates strictly against the Kubernetes
  schemas, for the oldest and the newest Kubernetes version tcpobs supports.
- The OTLP settings hold together: the endpoint is OTLP/HTTP on the node's address
  (status.hostIP), the resource names the node (spec.nodeName), and every $(VAR) a value
  uses is defined before it in the list (Kubernetes expands only those).

Prints one line per check, then `env: {...}` (the plain values, for the test to run the
daemon with), and exits 1 if any check failed.
"""

import copy
import json
import os
import re
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_manifests  # noqa: E402
from check_manifests import fail, failures, ok, validate  # noqa: E402


def pointer(path):
    return [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")]


def apply(doc, op):
    *parents, last = pointer(op["path"])
    target = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if op["op"] not in ("add", "replace"):
        raise ValueError(f"unsupported op {op['op']}")
    if isinstance(target, list):
        if last == "-":
            target.append(op["value"])
        elif op["op"] == "add":
            target.insert(int(last), op["value"])
        else:
            target[int(last)] = op["value"]
    else:
        target[last] = op["value"]


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    directory = sys.argv[1]
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    (base,) = kustomization["resources"]
    base = os.path.normpath(os.path.join(directory, base))
    check_manifests.check(base)
    with open(os.path.join(base, "kustomization.yaml")) as f:
        base_kustomization = yaml.safe_load(f)
    with open(os.path.join(base, "daemonset.yaml")) as f:
        daemonset = yaml.safe_load(f)
    daemonset["metadata"]["namespace"] = base_kustomization.get("namespace")

    patched = copy.deepcopy(daemonset)
    for patch in kustomization.get("patches", []):
        target = patch.get("target", {})
        if target.get("kind") != "DaemonSet" or target.get("name") != daemonset["metadata"]["name"]:
            fail(f"patch {patch.get('path')} does not target the DaemonSet")
            continue
        with open(os.path.join(directory, patch["path"])) as f:
            ops = yaml.safe_load(f)
        try:
            for op in ops:
                apply(patched, op)
            ok(f"patch {patch['path']} applies")
        except (KeyError, IndexError, ValueError, TypeError) as error:
            fail(f"patch {patch['path']}: {error!r}")
    validate("patched", patched)

    (container,) = patched["spec"]["template"]["spec"]["containers"]
    env = container.get("env", [])
    defined = set()
    plain = {}
    for var in env:
        name = var["name"]
        value = var.get("value")
        if value is not None:
            for used in re.findall(r"\$\((\w+)\)", value):
                if used not in defined:
                    fail(f"{name} uses $({used}), not defined before it")
            plain[name] = value
        defined.add(name)
    sources = {
        var["name"]: var["valueFrom"]["fieldRef"]["fieldPath"]
        for var in env
        if "fieldRef" in var.get("valueFrom", {})
    }
    endpoint = plain.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    match = re.fullmatch(r"http://\$\((\w+)\):4318", endpoint)
    if match and plain.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "http/protobuf":
        ok(f"OTEL_EXPORTER_OTLP_ENDPOINT is {endpoint}")
        if sources.get(match.group(1)) == "status.hostIP":
            ok(f"{match.group(1)} from status.hostIP")
        else:
            fail(f"{match.group(1)} is not the node's address (status.hostIP)")
    else:
        fail(f"OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r} is not OTLP/HTTP on a node address")
    node = re.search(r"(?:^|,)k8s\.node\.name=\$\((\w+)\)", plain.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    if node and sources.get(node.group(1)) == "spec.nodeName":
        ok("k8s.node.name from spec.nodeName")
    else:
        fail("OTEL_RESOURCE_ATTRIBUTES does not name the node from spec.nodeName")

    print("env: " + json.dumps(plain, separators=(",", ":")))
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
