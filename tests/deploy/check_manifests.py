"""Validates tcpobs's Kubernetes manifests; run by tests/integration/kubernetes.rs.

usage: check_manifests.py DIR

- Every resource the kustomization lists, and the ConfigMap it generates, is validated
  strictly (unknown fields are errors) against the Kubernetes schemas that
  kubernetes-validate ships, for the oldest and the newest Kubernetes version tcpobs supports.
  The ServiceMonitor is validated against a schema made from the Prometheus Operator's
  models (cloudcoil.models.prometheus_operator), made strict the same way.
- The kustomization lists every manifest in DIR, and every file it names exists.
- The pieces fit: the Service selects the DaemonSet's pods and targets a named container
  port, the ServiceMonitor selects the Service and scrapes a port it has, probes use a
  container port, every volume mount has its volume, the config volume is the generated
  ConfigMap, and --config names a file in it.

Prints one line per check and exits 1 if any failed.
"""

import copy
import os
import sys

import jsonschema
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator
from kubernetes_validate import utils as kubernetes

KUBERNETES_VERSIONS = ["1.30", "1.37"]

failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def ok(message):
    print(f"ok   {message}")


def strict(schema):
    """Forbids properties a schema does not name, at every level."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


SERVICE_MONITOR = strict(prometheus_operator.ServiceMonitor.model_json_schema(by_alias=True))


def validate(name, doc):
    kind = doc.get("kind")
    if kind == "ServiceMonitor":
        if doc.get("apiVersion") != "monitoring.coreos.com/v1":
            fail(f"{name}: ServiceMonitor apiVersion {doc.get('apiVersion')}")
            return
        errors = list(jsonschema.Draft202012Validator(SERVICE_MONITOR).iter_errors(doc))
        for error in errors:
            path = ".".join(str(p) for p in error.absolute_path)
            fail(f"{name}: {path}: {error.message}")
        if not errors:
            ok(f"{name}: ServiceMonitor against the Prometheus Operator schema")
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes.validate(doc, version, strict=True)
            ok(f"{name}: {kind} against Kubernetes {version}")
        except kubernetes.ValidationError as error:
            path = ".".join(str(p) for p in error.absolute_path)
            fail(f"{name}: {kind} against Kubernetes {version}: {path}: {error.message}")
        except kubernetes.SchemaNotFoundError as error:
            fail(f"{name}: {error.message}")


def check(directory):
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    manifests = sorted(
        name
        for name in os.listdir(directory)
        if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml"
    )
    listed = kustomization.get("resources", [])
    if sorted(listed) != manifests:
        fail(f"kustomization resources {sorted(listed)} != manifests {manifests}")
    else:
        ok(f"kustomization lists every manifest: {', '.join(manifests)}")

    docs = {}
    for name in listed:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            fail(f"kustomization names a missing file {name}")
            continue
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                doc = copy.deepcopy(doc)
                # As kustomize applies them.
                doc.setdefault("metadata", {})
                if doc["kind"] != "Namespace" and "namespace" in kustomization:
                    doc["metadata"]["namespace"] = kustomization["namespace"]
                validate(name, doc)
                docs[doc["kind"]] = doc

    config_maps = {}
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for file in generator.get("files", []):
            path = os.path.join(directory, file)
            if not os.path.exists(path):
                fail(f"configMapGenerator {generator['name']} names a missing file {file}")
                continue
            with open(path) as f:
                data[os.path.basename(file)] = f.read()
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"]},
            "data": data,
        }
        validate(f"configMapGenerator {generator['name']}", config_map)
        config_maps[generator["name"]] = config_map

    daemonset = docs.get("DaemonSet")
    service = docs.get("Service")
    monitor = docs.get("ServiceMonitor")
    if not (daemonset and service and monitor):
        fail("a DaemonSet, a Service and a ServiceMonitor are all needed")
        return
    pod = daemonset["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    if daemonset["spec"]["selector"].get("matchLabels", {}).items() <= pod_labels.items():
        ok("the DaemonSet selects its own pods")
    else:
        fail("the DaemonSet's selector does not match its pod labels")
    if service["spec"].get("selector", {}).items() <= pod_labels.items():
        ok("the Service selects the DaemonSet's pods")
    else:
        fail(f"the Service selector {service['spec'].get('selector')} misses {pod_labels}")
    monitor_labels = monitor["spec"]["selector"].get("matchLabels", {})
    if monitor_labels and monitor_labels.items() <= service["metadata"].get("labels", {}).items():
        ok("the ServiceMonitor selects the Service")
    else:
        fail("the ServiceMonitor's selector does not match the Service's labels")

    (container,) = pod["spec"]["containers"]
    before = len(failures)
    container_ports = {port["name"] for port in container.get("ports", [])}
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    for port in service["spec"]["ports"]:
        if port.get("targetPort") not in container_ports:
            fail(f"the Service targets port {port.get('targetPort')}, not a container port")
    for endpoint in monitor["spec"]["endpoints"]:
        if endpoint.get("port") not in service_ports:
            fail(f"the ServiceMonitor scrapes port {endpoint.get('port')}, not a Service port")
    for probe in ["livenessProbe", "readinessProbe"]:
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("port") not in container_ports:
            fail(f"{probe} uses port {get.get('port')}, not a container port")
    if len(failures) == before:
        ok("ports: Service → container, ServiceMonitor → Service, probes → container")

    volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
    mounts = {mount["name"]: mount for mount in container.get("volumeMounts", [])}
    for name in mounts:
        if name not in volumes:
            fail(f"volume mount {name} has no volume")
    args = container.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    found = False
    for name, volume in volumes.items():
        if "configMap" not in volume:
            continue
        config_map = config_maps.get(volume["configMap"]["name"])
        if config_map is None:
            fail(f"volume {name} uses ConfigMap {volume['configMap']['name']}, not generated")
            continue
        directory_in_pod = mounts.get(name, {}).get("mountPath", "")
        for key in config_map["data"]:
            found |= config_path == f"{directory_in_pod}/{key}"
    if found:
        ok(f"--config {config_path} is in the generated ConfigMap")
    else:
        fail(f"--config {config_path} is not a file of a mounted ConfigMap")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    check(sys.argv[1])
    print(f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
