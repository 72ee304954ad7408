"""Validates the Kubernetes manifests in this folder, offline. Run it through ./check, which
installs the pinned validator first.

Three layers, because each catches what the others cannot:

1. Every built-in resource is checked strictly (unknown fields are errors, so a misspelt
   `readinesProbe` fails) against the Kubernetes JSON schemas that kubernetes-validate
   bundles, for the oldest and the newest Kubernetes this folder is meant for; then the
   quantities and enumerations those schemas leave as free strings.
2. The RabbitmqCluster is a custom resource: no Kubernetes schema covers it, and no package
   on PyPI, npm or Debian was found to ship the operator's CRD. It is checked against
   RABBITMQ_CLUSTER below, which holds only what Herald relies on (fields it does not name
   pass unchecked); its affinity, resources and tolerations are the core Kubernetes types
   and are checked strictly as such. Any other kind without a schema fails.
3. The references between files that no schema sees: selectors that match the pods, named
   ports that exist, the Secret's keys, the grace period against Herald's drain, and the
   kustomization listing every manifest.
"""

import json
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import importlib_resources
import jsonschema
import referencing
import yaml
from kubernetes_validate import utils as kv

# 1.27 is the first release where every field used here is on by default
# (PodDisruptionBudget.spec.unhealthyPodEvictionPolicy); the newest is whatever the pinned
# kubernetes-validate bundles, so raising its pin raises the ceiling.
OLDEST = "1.27"

# Herald's default [service] drain (src/config.rs), used when routes.toml does not set one,
# and the time Herald is given after it to close its connections.
DEFAULT_DRAIN_SECONDS = 30
MARGIN_SECONDS = 10

# Files in this folder that are not resources for `kubectl apply -k`.
NOT_RESOURCES = {"kustomization.yaml", "secret.example.yaml"}

# What Herald relies on in the RabbitmqCluster. Not the operator's CRD: fields this does not
# name are allowed, and their values are not checked.
RABBITMQ_CLUSTER = {
    "$id": "https://kubernetes.io/api/herald-rabbitmqcluster.json",
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "rabbitmq.com/v1beta1"},
        "kind": {"const": "RabbitmqCluster"},
        "metadata": {
            "$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        },
        "spec": {
            "type": "object",
            "required": ["replicas", "rabbitmq"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 1},
                "image": {"type": "string", "minLength": 1},
                "rabbitmq": {
                    "type": "object",
                    "required": ["additionalConfig"],
                    "properties": {
                        "additionalConfig": {"type": "string"},
                        "additionalPlugins": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "persistence": {
                    "type": "object",
                    "properties": {
                        "storage": {
                            "$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.api.resource.Quantity"
                        },
                        "storageClassName": {"type": "string"},
                    },
                },
                "affinity": {"$ref": "/api/_definitions.json#/$defs/io.k8s.api.core.v1.Affinity"},
                "resources": {
                    "$ref": "/api/_definitions.json#/$defs/io.k8s.api.core.v1.ResourceRequirements"
                },
                "tolerations": {
                    "type": "array",
                    "items": {
                        "$ref": "/api/_definitions.json#/$defs/io.k8s.api.core.v1.Toleration"
                    },
                },
            },
        },
    },
}


# What the bundled schemas leave as free strings although the API server refuses anything
# else: quantities (a "64MB" or "lots" passes the schema) and these enumerations.
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
QUANTITY_KEYS = {"requests", "limits"}  # maps of quantities
QUANTITY_FIELDS = {"sizeLimit", "storage"}
ENUMS = {
    "imagePullPolicy": {"Always", "Never", "IfNotPresent"},
    "protocol": {"TCP", "UDP", "SCTP"},
    "whenUnsatisfiable": {"DoNotSchedule", "ScheduleAnyway"},
    "unhealthyPodEvictionPolicy": {"IfHealthyBudget", "AlwaysAllow"},
    "restartPolicy": {"Always", "OnFailure", "Never"},
}


def loose_fields(node, path=()):
    """Errors in the quantities and enumerations under node, which the schemas do not see."""
    errors = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = path + (str(key),)
            if key in QUANTITY_KEYS and isinstance(value, dict) and "resources" in path[-1:]:
                quantities = list(value.items())
            elif key in QUANTITY_FIELDS and isinstance(value, (str, int, float)):
                quantities = [(None, value)]
            else:
                quantities = []
            for name, q in quantities:
                if not QUANTITY.match(str(q)):
                    where = ".".join(here + ((name,) if name else ()))
                    errors.append(f"{where}: {q!r} is not a Kubernetes quantity (64Mi, 100m, 10Gi)")
            if key in ENUMS and isinstance(value, str) and value not in ENUMS[key]:
                errors.append(f"{'.'.join(here)}: {value!r} is not one of {sorted(ENUMS[key])}")
            errors += loose_fields(value, here)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            errors += loose_fields(item, path + (str(i),))
    return errors


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; kubectl refuses them. Refuse them here too."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def full_version(minor):
    """'1.27' -> '1.27.0', as the bundled schema folders are named."""
    for v in kv.all_versions():
        if kv.major_minor(v) == minor:
            return v
    raise SystemExit(f"kubernetes-validate {kv.__version__} has no schemas for Kubernetes {minor}")


def validate_custom(doc, version):
    """Errors of the RabbitmqCluster against RABBITMQ_CLUSTER and Kubernetes' core types."""
    path = importlib_resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{full_version(version)}-local-strict/_definitions.json"
    )
    definitions = referencing.Resource.from_contents(json.loads(path.read_text()))
    registry = definitions @ referencing.Registry()
    validator = jsonschema.Draft202012Validator(RABBITMQ_CLUSTER, registry=registry)
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def seconds(text):
    """A humantime span as Herald writes it ("30s", "2m", "1m 30s"), in seconds."""
    units = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0
    for number, unit in re.findall(r"(\d+)\s*([a-z]+)", text):
        if unit not in units:
            raise ValueError(text)
        total += int(number) * units[unit]
    return total


def service_drain(text):
    """[service] drain in routes.toml, or None."""
    try:
        import tomllib  # Python 3.11 and later
    except ImportError:
        section = re.search(r"(?ms)^\[service\]\s*$(.*?)(?=^\[)", text + "\n[")
        found = section and re.search(r'(?m)^\s*drain\s*=\s*"([^"]*)"', section.group(1))
        return found.group(1) if found else None
    return tomllib.loads(text).get("service", {}).get("drain")


def main(folder):
    folder = Path(folder)
    root = folder.resolve().parents[1]
    errors = []
    newest = kv.major_minor(kv.latest_version())
    versions = [OLDEST, newest] if newest != OLDEST else [OLDEST]

    # --- the kustomization lists every manifest, and not the example Secret ------------
    kustomization = yaml.load((folder / "kustomization.yaml").read_text(), Loader=UniqueKeyLoader)
    listed = kustomization.get("resources") or []
    for name in listed:
        if not (folder / name).is_file():
            errors.append(f"kustomization.yaml: lists {name}, which does not exist")
    if "secret.example.yaml" in listed:
        errors.append(
            "kustomization.yaml: lists secret.example.yaml; applying it would replace the real "
            "Secret with placeholders"
        )
    for path in sorted(folder.glob("*.y*ml")):
        if path.name not in NOT_RESOURCES and path.name not in listed:
            errors.append(f"kustomization.yaml: does not list {path.name}")

    # --- every document of every file, against its schema ------------------------------
    resources = []  # (file name, document)
    checked = files = 0
    for path in sorted(folder.glob("*.y*ml")):
        if path.name == "kustomization.yaml":
            continue
        try:
            with path.open() as stream:  # so that YAML errors name the file
                docs = [d for d in yaml.load_all(stream, Loader=UniqueKeyLoader) if d is not None]
        except yaml.YAMLError as e:
            errors.append(f"{path.name}: not valid YAML: {e}")
            continue
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                errors.append(f"{path.name}: a document without kind and apiVersion")
                continue
            what = f"{path.name}: {doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"
            for version in versions:
                if doc["kind"] == "RabbitmqCluster":
                    problems = validate_custom(doc, version)
                else:
                    try:
                        kv.validate(doc, version, strict=True)
                        problems = []
                    except kv.ValidationError as e:
                        problems = [f"{'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}"]
                    except kv.SchemaNotFoundError:
                        problems = [
                            f"Kubernetes {version} has no {doc['kind']} in {doc['apiVersion']} "
                            "(a misspelt kind or apiVersion, or a custom resource check.py "
                            "does not know)"
                        ]
                errors.extend(f"{what}: Kubernetes {version}: {p}" for p in problems)
            errors.extend(f"{what}: {p}" for p in loose_fields(doc))
            resources.append((path.name, doc))
            checked += 1
        files += 1

    # The references below assume well-formed resources: with a wrong type or a missing
    # field they would only add confusion (or fail), so they wait until layers 1 and 2 pass.
    if errors:
        return report(errors, "the references between files are checked once these are fixed")

    # --- what the files say about each other --------------------------------------------
    def of_kind(kind):
        return [(f, d) for f, d in resources if d["kind"] == kind]

    def get(d, *keys, default=None):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return default
            d = d[k]
        return d

    pods = []  # (workload name, pod labels, replicas)
    secrets = {get(d, "metadata", "name"): d for _, d in of_kind("Secret")}
    drain = DEFAULT_DRAIN_SECONDS
    routes = root / "routes.toml"
    if routes.is_file():
        setting = service_drain(routes.read_text())
        if setting:
            drain = seconds(setting)

    for f, d in of_kind("Deployment"):
        name = get(d, "metadata", "name")
        labels = get(d, "spec", "template", "metadata", "labels", default={})
        replicas = get(d, "spec", "replicas", default=1)
        pods.append((name, labels, replicas))
        if not matches(get(d, "spec", "selector", "matchLabels"), labels):
            errors.append(f"{f}: Deployment/{name}: spec.selector does not match the pod labels")
        pod = get(d, "spec", "template", "spec", default={})
        for c in get(pod, "topologySpreadConstraints", default=[]):
            if not matches(get(c, "labelSelector", "matchLabels"), labels):
                errors.append(
                    f"{f}: Deployment/{name}: a topologySpreadConstraint's labelSelector does "
                    "not match its own pods, so it spreads nothing"
                )
        grace = get(pod, "terminationGracePeriodSeconds", default=30)
        if grace < drain + MARGIN_SECONDS:
            errors.append(
                f"{f}: Deployment/{name}: terminationGracePeriodSeconds is {grace}, but Herald "
                f"drains for {drain}s: give it at least {drain + MARGIN_SECONDS}"
            )
        containers = get(pod, "containers", default=[])
        ports = {
            p.get(k)
            for c in containers
            for p in c.get("ports", [])
            for k in ("name", "containerPort")
        }
        for c in containers:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = get(c, probe, "httpGet", "port")
                if port is not None and port not in ports:
                    errors.append(
                        f"{f}: Deployment/{name}: {probe} uses port {port!r}, not declared"
                    )
            wanted = [(get(e, "secretRef", "name"), None) for e in c.get("envFrom", [])]
            wanted += [
                (
                    get(e, "valueFrom", "secretKeyRef", "name"),
                    get(e, "valueFrom", "secretKeyRef", "key"),
                )
                for e in c.get("env", [])
                if get(e, "valueFrom", "secretKeyRef")
            ]
            for secret, key in wanted:
                if secret is None:
                    continue
                shown = secrets.get(secret)
                if shown is None:
                    errors.append(
                        f"{f}: Deployment/{name}: reads Secret {secret}, not in secret.example.yaml"
                    )
                elif key and key not in (shown.get("stringData") or {}) | (shown.get("data") or {}):
                    errors.append(
                        f"{f}: Deployment/{name}: reads {key} of Secret {secret}, not in the example"
                    )
        for f2, svc in of_kind("Service"):
            if matches(get(svc, "spec", "selector"), labels):
                for p in get(svc, "spec", "ports", default=[]):
                    target = p.get("targetPort", p.get("port"))
                    if target not in ports:
                        errors.append(
                            f"{f2}: Service/{get(svc, 'metadata', 'name')}: targetPort {target!r} "
                            f"is not a port of Deployment/{name}"
                        )

    clusters = of_kind("RabbitmqCluster")
    for f, d in clusters:
        name = get(d, "metadata", "name")
        replicas = get(d, "spec", "replicas", default=1)
        # The operator labels a cluster's pods app.kubernetes.io/name: <cluster name>.
        pods.append((name, {"app.kubernetes.io/name": name}, replicas))
        if not isinstance(replicas, int) or replicas < 3 or replicas % 2 == 0:
            errors.append(
                f"{f}: RabbitmqCluster/{name}: spec.replicas must be odd and at least 3, for "
                "quorum queues to survive losing a node"
            )
        config = get(d, "spec", "rabbitmq", "additionalConfig", default="")
        if not re.search(r"(?m)^\s*default_queue_type\s*=\s*quorum\s*$", str(config)):
            errors.append(
                f"{f}: RabbitmqCluster/{name}: additionalConfig does not set default_queue_type = quorum"
            )

    for f, d in of_kind("Service"):
        if not any(matches(get(d, "spec", "selector"), labels) for _, labels, _ in pods):
            errors.append(
                f"{f}: Service/{get(d, 'metadata', 'name')}: its selector matches no pods defined here"
            )
    for f, d in of_kind("PodDisruptionBudget"):
        name = get(d, "metadata", "name")
        selected = [
            (w, n)
            for w, labels, n in pods
            if matches(get(d, "spec", "selector", "matchLabels"), labels)
        ]
        if not selected:
            errors.append(
                f"{f}: PodDisruptionBudget/{name}: its selector matches no pods defined here"
            )
        minimum = get(d, "spec", "minAvailable")
        for workload, n in selected:
            if isinstance(minimum, int) and minimum >= n:
                errors.append(
                    f"{f}: PodDisruptionBudget/{name}: minAvailable {minimum} with {n} replicas of "
                    f"{workload} allows no eviction, so nodes could never be drained"
                )

    # The example Secret: the keys Herald needs, URLs that point at the broker defined
    # here, and nothing that looks like a real credential.
    herald = secrets.get("herald")
    if herald is None:
        errors.append("secret.example.yaml: no Secret named herald")
    else:
        values = get(herald, "stringData", default={})
        for key in ("HERALD_AMQP_URLS", "HERALD_LEDGER_URL", "HERALD_SMTP_URL"):
            if key not in values:
                errors.append(f"secret.example.yaml: no {key}")
        nodes = [u.strip() for u in values.get("HERALD_AMQP_URLS", "").split(",") if u.strip()]
        for _, d in clusters[:1]:
            name = get(d, "metadata", "name")
            want = [
                f"{name}-server-{i}.{name}-nodes"
                for i in range(get(d, "spec", "replicas", default=0))
            ]
            have = [urlsplit(u).hostname for u in nodes]
            if have != want:
                errors.append(
                    f"secret.example.yaml: HERALD_AMQP_URLS names {have}, but "
                    f"RabbitmqCluster/{name} has the nodes {want}"
                )
        if not values.get("HERALD_LEDGER_URL", "").startswith(("postgres://", "postgresql://")):
            errors.append("secret.example.yaml: HERALD_LEDGER_URL is not a postgres:// URL")
        for key, value in values.items():
            if not key.startswith("HERALD_"):
                errors.append(f"secret.example.yaml: {key} is not a variable Herald reads")
            parts = [urlsplit(u).password for u in str(value).split(",") if "://" in u]
            if key.startswith("HERALD_WEBHOOK_SECRET"):
                parts.append(str(value).removeprefix("whsec_"))
            if any(p is not None and p != "REPLACE_ME" for p in parts):
                errors.append(
                    f"secret.example.yaml: {key} holds something other than the REPLACE_ME placeholder"
                )

    if errors:
        return report(errors)
    print(
        f"deploy/kubernetes: {checked} resources in {files} files valid, kustomization.yaml "
        f"lists all but the example Secret (Kubernetes {' and '.join(versions)}, "
        f"kubernetes-validate {kv.__version__})"
    )
    return 0


def report(errors, note=None):
    print(f"deploy/kubernetes: {len(errors)} problem(s):", file=sys.stderr)
    for e in errors:
        print(f"  {e}", file=sys.stderr)
    if note:
        print(f"  ({note})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))
