"""Offline checks of the CRDs in crds/: shape, documentation, structural-schema rules and CEL rules.

The CEL rules themselves are evaluated by a real kube-apiserver in the e2e tests; here we check that
they exist where they should, name the field they guard, and that the regular expressions they and
the OpenAPI patterns use accept/reject what they should (Python's ``re`` agrees with RE2 on these).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
GROUP = "failovervm.io"

Schema = dict[str, Any]

EXPECTED: dict[str, dict[str, Any]] = {
    "failovervms.yaml": {
        "kind": "FailoverVM",
        "plural": "failovervms",
        "scope": "Namespaced",
        "shortNames": ["fvm"],
        "categories": ["failovervm", "all"],
        "columns": {
            "Phase": ".status.phase",
            "Node": ".status.nodeName",
            "VF": ".status.vf.pciAddress",
            "Ready": '.status.conditions[?(@.type=="Ready")].status',
            "Failover": '.status.conditions[?(@.type=="FailoverReady")].status',
            "Age": ".metadata.creationTimestamp",
        },
    },
    "failovervmmigrations.yaml": {
        "kind": "FailoverVMMigration",
        "plural": "failovervmmigrations",
        "scope": "Namespaced",
        "shortNames": ["fvmm"],
        "categories": ["failovervm"],
        "columns": {
            "VM": ".spec.vmName",
            "Phase": ".status.phase",
            "Source": ".status.sourceNode",
            "Target": ".status.targetNode",
            "Downtime": ".status.stats.downtimeMs",
            "Standby": ".status.stats.standbyMs",
            "Failover": '.status.conditions[?(@.type=="FailoverReady")].status',
            "Age": ".metadata.creationTimestamp",
        },
    },
    "vfpools.yaml": {
        "kind": "VFPool",
        "plural": "vfpools",
        "scope": "Cluster",
        "shortNames": ["vfp"],
        "categories": ["failovervm"],
        "columns": {
            "Total": ".status.totals.total",
            "Allocated": ".status.totals.allocated",
            "Free": ".status.totals.free",
            "Age": ".metadata.creationTimestamp",
        },
    },
    "vfclaims.yaml": {
        "kind": "VFClaim",
        "plural": "vfclaims",
        "scope": "Cluster",
        "shortNames": ["vfc"],
        "categories": ["failovervm"],
        "columns": {
            "Node": ".spec.node",
            "PCI": ".spec.pciAddress",
            "Owner": ".spec.owner.name",
            "Purpose": ".spec.purpose",
            "Age": ".metadata.creationTimestamp",
        },
    },
    "macleases.yaml": {
        "kind": "MACLease",
        "plural": "macleases",
        "scope": "Cluster",
        "shortNames": ["macl"],
        "categories": ["failovervm"],
        "columns": {
            "Pool": ".spec.pool",
            "MAC": ".spec.mac",
            "Namespace": ".spec.owner.namespace",
            "Owner": ".spec.owner.name",
            "Age": ".metadata.creationTimestamp",
        },
    },
    "vfinventories.yaml": {
        "kind": "VFInventory",
        "plural": "vfinventories",
        "scope": "Cluster",
        "shortNames": ["vfi"],
        "categories": ["failovervm"],
        "columns": {
            "Node": ".spec.nodeName",
            "Age": ".metadata.creationTimestamp",
        },
    },
    "failovermigrationpolicies.yaml": {
        "kind": "FailoverMigrationPolicy",
        "plural": "failovermigrationpolicies",
        "scope": "Cluster",
        "shortNames": ["fvmp"],
        "categories": ["failovervm"],
        "columns": {
            "Bandwidth": ".spec.bandwidthPerMigrationMiBps",
            "Timeout/GiB": ".spec.completionTimeoutPerGiB",
            "AutoConverge": ".spec.allowAutoConverge",
            "PostCopy": ".spec.allowPostCopy",
            "Age": ".metadata.creationTimestamp",
        },
    },
}

# (file, schema path, substring of the rule, substring the message must contain)
EXPECTED_RULES = [
    ("failovervms.yaml", "", "self.metadata.name.size() <= 63", "metadata.name"),
    ("failovervms.yaml", "", "self.metadata.name.size() <= 63", "libvirt domain name"),
    ("failovervms.yaml", "spec.memory", "isQuantity(self)", "spec.memory"),
    ("failovervms.yaml", "spec.memory", "quantity('32Mi')", "spec.memory"),
    ("failovervms.yaml", "spec.memory", "type(self) == int ? self >= 33554432", "32Mi"),
    ("failovervms.yaml", "spec.disks", "bootOrder", "spec.disks[].bootOrder"),
    ("failovervms.yaml", "spec.disks[].path", "startsWith('/')", "spec.disks[].path"),
    ("failovervms.yaml", "spec.disks[].path", 'matches("(^|/)', "spec.disks[].path"),
    ("failovervms.yaml", "spec.kernel", "startsWith('/')", "spec.kernel"),
    ("failovervms.yaml", "spec.kernel", 'matches("(^|/)', "spec.kernel"),
    ("failovervms.yaml", "spec.initrd", "startsWith('/')", "spec.initrd"),
    ("failovervms.yaml", "spec.initrd", 'matches("(^|/)', "spec.initrd"),
    ("failovervms.yaml", "spec", "has(self.initrd)", "spec.initrd"),
    ("failovervms.yaml", "spec.network.mac", "matches(", "spec.network.mac"),
    ("failovervms.yaml", "spec.network.mac", "02468ace", "spec.network.mac"),
    ("failovervms.yaml", "spec.tolerations[]", "Exists", "spec.tolerations[]"),
    ("failovervmmigrations.yaml", "spec", "self == oldSelf", "spec is immutable"),
    ("vfinventories.yaml", "", "self.metadata.name == self.spec.nodeName", "spec.nodeName"),
    ("macleases.yaml", "", "startsWith(self.spec.pool", "metadata.name"),
    ("macleases.yaml", "spec", "self == oldSelf", "spec is immutable"),
    ("macleases.yaml", "spec.mac", "matches(", "spec.mac"),
    ("vfpools.yaml", "", "self.metadata.name.size() <= 63", "metadata.name"),
    ("vfpools.yaml", "", "self.metadata.name.size() <= 63", "vf.failovervm.io/<name>"),
    ("vfpools.yaml", "", "self.metadata.name.matches(", "metadata.name"),
    ("vfpools.yaml", "spec.vendorID", "matches(", "spec.vendorID"),
    ("vfpools.yaml", "spec.deviceID", "matches(", "spec.deviceID"),
    ("vfpools.yaml", "spec.standby", "has(self.mode)", "spec.standby.mode"),
    ("vfclaims.yaml", "spec.node", "self == oldSelf", "spec.node"),
    ("vfclaims.yaml", "spec.pciAddress", "self == oldSelf", "spec.pciAddress"),
    ("vfclaims.yaml", "spec.pciAddress", "matches(", "spec.pciAddress"),
    ("vfclaims.yaml", "spec.owner.uid", "self == oldSelf", "spec.owner.uid"),
    ("vfclaims.yaml", "spec", "MigrationTarget", "spec.migration"),
    ("failovermigrationpolicies.yaml", "spec", "postCopyAfterIterations", "spec.postCopyAfterIterations"),
    ("failovermigrationpolicies.yaml", "spec", "parallelConnections > 1", "spec.parallelConnections"),
    ("failovermigrationpolicies.yaml", "spec.vmSelector.matchExpressions[]", "NotIn",
     "spec.vmSelector.matchExpressions[].values"),
    ("failovermigrationpolicies.yaml", "spec.namespaceSelector.matchExpressions[]", "NotIn",
     "spec.namespaceSelector.matchExpressions[].values"),
]

SUPPORTED_REASONS = {"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"}
RULE_KEYS = {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}


@functools.cache
def load(name: str) -> dict[str, Any]:
    """Parsed CRD (cached: callers must not modify it)."""
    with open(CRD_DIR / name, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert len(docs) == 1, f"{name}: expected exactly one document"
    doc: dict[str, Any] = docs[0]
    return doc


def root_schema(crd: dict[str, Any]) -> Schema:
    schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Yield (dotted path, schema) for every node; list items are ``<path>[]``, map values ``<path>{}``."""
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{key}" if path else key)
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def node_at(schema: Schema, path: str) -> Schema:
    for p, s in walk(schema):
        if p == path:
            return s
    raise KeyError(path)


def cel_string_literals(rule: str, func: str) -> list[str]:
    """Arguments of ``func('...')``/``func("...")`` calls in a CEL rule, with CEL escapes undone."""
    out = []
    for m in re.finditer(re.escape(func) + r"""\((['"])((?:\\.|(?!\1).)*)\1\)""", rule):
        out.append(re.sub(r"\\(.)", r"\1", m.group(2)))
    return out


CRD_FILES = sorted(EXPECTED)


def test_every_crd_file_is_known() -> None:
    on_disk = {p.name for p in CRD_DIR.glob("*.yaml")} - {"kopf-peering.yaml"}
    assert sorted(on_disk) == CRD_FILES
    for path in CRD_DIR.glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["kind"] == "CustomResourceDefinition"


@pytest.mark.parametrize("name", CRD_FILES)
def test_crd_metadata(name: str) -> None:
    crd = load(name)
    exp = EXPECTED[name]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{exp['plural']}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == exp["scope"]
    names = spec["names"]
    assert names["kind"] == exp["kind"]
    assert names["listKind"] == exp["kind"] + "List"
    assert names["plural"] == exp["plural"]
    assert names["singular"] == exp["kind"].lower()
    assert names["shortNames"] == exp["shortNames"]
    assert names["categories"] == exp["categories"]
    versions = spec["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    assert versions[0]["served"] is True and versions[0]["storage"] is True
    assert versions[0]["subresources"] == {"status": {}}


@pytest.mark.parametrize("name", CRD_FILES)
def test_printer_columns(name: str) -> None:
    crd = load(name)
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    by_name = {c["name"]: c for c in columns}
    assert len(by_name) == len(columns), "duplicate column names"
    for col_name, json_path in EXPECTED[name]["columns"].items():
        assert col_name in by_name, f"{name}: missing printer column {col_name}"
        assert by_name[col_name]["jsonPath"] == json_path
    assert by_name["Age"]["type"] == "date"
    schema = root_schema(crd)
    for col in columns:
        assert col["type"] in {"integer", "number", "string", "boolean", "date"}
        if col["name"] != "Age":
            assert col.get("description"), f"{name}: column {col['name']} has no description"
        path = col["jsonPath"]
        if path.startswith(".metadata."):
            continue
        # The column must point at a field the schema defines (filters like [?(...)] stop the walk).
        plain = re.sub(r"\[\?\(.*?\)\]", "[]", path).lstrip(".")
        node = node_at(schema, plain.rsplit("[]", 1)[0] + ("[]" if "[]" in plain else ""))
        if "[]" in plain:
            field = plain.rsplit("[].", 1)[1]
            node = node["properties"][field]
        expected_type = {"date": "string"}.get(col["type"], col["type"])
        if "x-kubernetes-int-or-string" not in node:
            assert node["type"] == expected_type, f"{name}: column {col['name']} type mismatch"


@pytest.mark.parametrize("name", CRD_FILES)
def test_every_field_has_a_description(name: str) -> None:
    schema = root_schema(load(name))
    assert schema.get("description"), f"{name}: root schema has no description"
    missing = [
        p
        for p, s in walk(schema)
        if p not in {"", "metadata"} and not p.endswith("[]") and not p.endswith("{}") and not s.get("description")
    ]
    assert missing == [], f"{name}: properties without a description: {missing}"
    # Arrays of objects also describe their items (kubectl explain shows it for nested lists).
    undocumented_items = [
        p for p, s in walk(schema) if p.endswith("[]") and s.get("type") == "object" and not s.get("description")
    ]
    assert undocumented_items == []


# Fields passed on to a Kubernetes object unchanged, whose schema is Kubernetes' own: a Pod's
# affinity goes into the VM pod as is, and the API server validates it when the pod is created (an
# invalid one shows on the FailoverVM as PodRejected). Only these preserve unknown fields.
OPAQUE = {("failovervms.yaml", "spec.affinity")}


@pytest.mark.parametrize("name", CRD_FILES)
def test_structural_schema(name: str) -> None:
    schema = root_schema(load(name))
    assert schema["type"] == "object"
    assert "additionalProperties" not in schema
    if "metadata" in schema["properties"]:
        # Allowed only to restrict name/generateName (and to give root rules a fieldPath there); the
        # API server rejects anything else on metadata, even a description.
        metadata = schema["properties"]["metadata"]
        assert set(metadata) == {"type", "properties"}, metadata
        assert metadata["type"] == "object"
        assert set(metadata["properties"]) <= {"name", "generateName"}
        assert all(p["type"] == "string" for p in metadata["properties"].values())
    assert set(schema["properties"]) >= {"apiVersion", "kind", "spec", "status"}
    for path, s in walk(schema):
        where = f"{name}: {path or '<root>'}"
        if s.get("x-kubernetes-int-or-string"):
            assert "type" not in s, where
            assert s.get("anyOf") == [{"type": "integer"}, {"type": "string"}], where
        else:
            assert s.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, where
        if (name, path) in OPAQUE:
            assert s.get("type") == "object" and s.get("description") and not s.get("properties"), where
        else:
            assert "x-kubernetes-preserve-unknown-fields" not in s, f"{where}: schemas must be fully specified"
        for forbidden in ("$ref", "oneOf", "not", "allOf", "nullable"):
            assert forbidden not in s, f"{where}: {forbidden} is not used in these CRDs"
        if "anyOf" in s:
            assert s.get("x-kubernetes-int-or-string"), where
        if s.get("type") == "array":
            assert "items" in s, where
            assert s.get("x-kubernetes-list-type") in {"atomic", "set", "map"}, f"{where}: set a list type"
            if s["x-kubernetes-list-type"] == "map":
                items = s["items"]
                assert items["type"] == "object", where
                for key in s["x-kubernetes-list-map-keys"]:
                    assert key in items["properties"], where
                    assert items["properties"][key]["type"] not in {"object", "array"}, where
                    assert key in items.get("required", []) or "default" in items["properties"][key], (
                        f"{where}: list map key {key} must be required or defaulted"
                    )
            if s["x-kubernetes-list-type"] == "set":
                assert s["items"]["type"] not in {"object", "array"}, where
        if s.get("type") == "object":
            props = s.get("properties") or {}
            for req in s.get("required", []):
                assert req in props, f"{where}: required field {req} is not defined"
            assert not (props and isinstance(s.get("additionalProperties"), dict)), where
        if "enum" in s:
            assert len(set(s["enum"])) == len(s["enum"]), where
            for value in s["enum"]:
                assert isinstance(value, str), f"{where}: enum values must be quoted strings"
        if "default" in s:
            if "enum" in s:
                assert s["default"] in s["enum"], where
            typ = s.get("type")
            py = {"boolean": bool, "string": str, "integer": int, "object": dict, "array": list}.get(typ or "")
            if py is not None:
                assert isinstance(s["default"], py), where
        if "pattern" in s:
            re.compile(s["pattern"])
        for rule in s.get("x-kubernetes-validations", []):
            assert set(rule) <= RULE_KEYS, where
            assert rule["rule"].strip(), where
            assert "\n" not in rule["rule"]
            assert rule.get("message") or rule.get("messageExpression"), f"{where}: rule without a message"
            assert "\n" not in rule.get("message", "")
            if "reason" in rule:
                assert rule["reason"] in SUPPORTED_REASONS, where
            if "optionalOldSelf" in rule:
                assert "oldSelf" in rule["rule"], where
            if "fieldPath" in rule:
                target = s
                for part in rule["fieldPath"].lstrip(".").split("."):
                    assert part in (target.get("properties") or {}), f"{where}: bad fieldPath {rule['fieldPath']}"
                    target = target["properties"][part]


@pytest.mark.parametrize("name", CRD_FILES)
def test_status_has_standard_conditions(name: str) -> None:
    status = root_schema(load(name))["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    for p, s in walk(status):
        if s.get("type") == "integer":
            assert s.get("format") in {"int32", "int64"}, f"{name}: status.{p} needs a format"


@pytest.mark.parametrize(("name", "path", "rule_part", "message_part"), EXPECTED_RULES)
def test_cel_rule_exists_and_names_the_field(name: str, path: str, rule_part: str, message_part: str) -> None:
    node = node_at(root_schema(load(name)), path)
    rules = node.get("x-kubernetes-validations", [])
    matching = [r for r in rules if rule_part in r["rule"]]
    assert matching, f"{name}: no rule containing {rule_part!r} at {path or '<root>'}: {rules}"
    assert any(message_part in r.get("message", "") for r in matching), matching


@pytest.mark.parametrize("name", CRD_FILES)
def test_cel_inputs_are_bounded(name: str) -> None:
    """Strings, lists and maps a CEL rule can see carry maxLength/maxItems/maxProperties, which keeps
    the estimated rule cost far below the apiserver's limits."""
    schema = root_schema(load(name))
    for path, s in walk(schema):
        if not s.get("x-kubernetes-validations") or path == "":
            continue  # the root rule only looks at metadata.name (bounded by the apiserver)
        for sub_path, sub in walk(s, path):
            where = f"{name}: {sub_path} (seen by a rule at {path})"
            if sub.get("type") == "string" and "enum" not in sub and "format" not in sub:
                assert "maxLength" in sub, where
            if sub.get("x-kubernetes-int-or-string"):
                assert "maxLength" in sub, where
            if sub.get("type") == "array":
                assert "maxItems" in sub, where
            if sub.get("type") == "object" and isinstance(sub.get("additionalProperties"), dict):
                assert "maxProperties" in sub, where


def test_spec_immutability_rules_use_transition_rules_on_correlatable_fields() -> None:
    mig = node_at(root_schema(load("failovervmmigrations.yaml")), "spec")
    assert {"rule": "self == oldSelf", "message": "spec is immutable", "reason": "FieldValueForbidden"} in mig[
        "x-kubernetes-validations"
    ]
    claim = root_schema(load("vfclaims.yaml"))
    for path in ("spec.node", "spec.pciAddress", "spec.owner.uid"):
        # No list on the way: oldSelf is only usable where the old value can be correlated.
        assert "[]" not in path
        assert any(r["rule"] == "self == oldSelf" for r in node_at(claim, path)["x-kubernetes-validations"])


def test_failovervm_spec_defaults_and_bounds() -> None:
    spec = node_at(root_schema(load("failovervms.yaml")), "spec")
    props = spec["properties"]
    assert props["running"] == {**props["running"], "type": "boolean", "default": True}
    assert (props["cpu"]["minimum"], props["cpu"]["maximum"]) == (1, 64)
    assert props["accel"]["enum"] == ["kvm", "tcg"] and props["accel"]["default"] == "kvm"
    assert props["evictionStrategy"]["enum"] == ["LiveMigrate", "Shutdown"]
    assert props["evictionStrategy"]["default"] == "LiveMigrate"
    disks = props["disks"]
    assert disks["maxItems"] == 16
    assert disks["x-kubernetes-list-type"] == "map" and disks["x-kubernetes-list-map-keys"] == ["name"]
    dprops = disks["items"]["properties"]
    assert dprops["format"]["enum"] == ["raw", "qcow2"] and dprops["format"]["default"] == "raw"
    assert dprops["bus"]["enum"] == ["virtio", "sata", "scsi"] and dprops["bus"]["default"] == "virtio"
    assert dprops["bootOrder"]["minimum"] == 1
    assert props["network"]["required"] == ["pool"]
    tol = props["tolerations"]["items"]["properties"]
    assert set(tol) >= {"key", "operator", "value", "effect"}
    assert props["nodeSelector"]["additionalProperties"]["type"] == "string"
    phases = node_at(root_schema(load("failovervms.yaml")), "status.phase")["enum"]
    assert phases == ["Pending", "Scheduled", "Starting", "Running", "Stopping", "Stopped", "Migrating", "Failed"]
    status = node_at(root_schema(load("failovervms.yaml")), "status")["properties"]
    assert set(status["vf"]["properties"]) == {"node", "pf", "pciAddress", "claimName"}
    assert set(status["domain"]["properties"]) == {"name", "uuid", "generation"}
    assert set(status["migration"]["properties"]) == {
        "name",
        "state",
        "sourceNode",
        "targetNode",
        "targetPciAddress",
        "targetClaim",
    }


def test_migration_status_shape() -> None:
    status = node_at(root_schema(load("failovervmmigrations.yaml")), "status")["properties"]
    assert status["phase"]["enum"] == [
        "Pending",
        "Scheduling",
        "TargetReady",
        "Running",
        "Succeeded",
        "Failed",
        "Aborted",
    ]
    for stat in ("downtimeMs", "totalTimeMs", "dataTotalBytes", "memoryIteration", "setupTimeMs"):
        assert status["stats"]["properties"][stat]["type"] == "integer"
        assert status["stats"]["properties"][stat]["format"] == "int64"
    assert status["warnings"]["items"]["type"] == "string"
    assert status["startTimestamp"]["format"] == "date-time"
    assert node_at(root_schema(load("failovervmmigrations.yaml")), "spec")["required"] == ["vmName"]


def test_vfpool_and_vfclaim_shape() -> None:
    pool = root_schema(load("vfpools.yaml"))
    assert node_at(pool, "spec.pfNames")["minItems"] == 1
    assert node_at(pool, "spec.standby")["required"] == ["source"]
    standby = node_at(pool, "spec.standby")["properties"]
    assert standby["type"]["enum"] == ["bridge", "direct", "network"] and standby["type"]["default"] == "bridge"
    assert standby["mode"]["enum"] == ["bridge", "passthrough", "vepa", "private"]
    # Each node's VFs are in its own VFInventory; the pool keeps totals (no object grows with nodes).
    assert "nodes" not in node_at(pool, "status")["properties"]
    inventory = root_schema(load("vfinventories.yaml"))
    entries = node_at(inventory, "spec.pools")
    assert entries["x-kubernetes-list-map-keys"] == ["name"]
    assert set(entries["items"]["properties"]) >= {"name", "total", "pfs", "simulated", "vfs", "missingPfs"}
    vfs = entries["items"]["properties"]["vfs"]
    assert vfs["x-kubernetes-list-map-keys"] == ["pciAddress"]
    assert set(vfs["items"]["properties"]) == {"pciAddress", "pf", "index", "vendor", "device"}
    assert set(node_at(pool, "status.totals")["properties"]) == {"total", "allocated", "free"}
    claim = root_schema(load("vfclaims.yaml"))
    assert node_at(claim, "spec.purpose")["enum"] == ["Running", "MigrationTarget"]
    assert set(node_at(claim, "spec.owner")["required"]) == {"namespace", "name", "uid"}
    assert node_at(claim, "status.phase")["enum"] == ["Reserved", "Bound", "Releasing"]


# --- the regular expressions used by rules and patterns -------------------------------------------


def regex_of(name: str, path: str, contains: str = "") -> re.Pattern[str]:
    node = node_at(root_schema(load(name)), path)
    found = [
        lit
        for r in node.get("x-kubernetes-validations", [])
        for lit in cel_string_literals(r["rule"], "matches")
        if contains in lit
    ]
    assert found, f"no matches() in rules at {path}"
    return re.compile(found[0])


@pytest.mark.parametrize(
    ("mac", "valid", "unicast"),
    [
        ("52:54:00:12:34:56", True, True),
        ("02:00:00:00:00:01", True, True),
        ("AA:BB:CC:DD:EE:FF", True, True),
        ("01:00:5e:00:00:01", True, False),
        ("33:33:00:00:00:01", True, False),
        ("ff:ff:ff:ff:ff:ff", True, False),
        ("0B:00:00:00:00:00", True, False),
        ("52-54-00-12-34-56", False, None),
        ("52:54:00:12:34", False, None),
        ("52:54:00:12:34:567", False, None),
        ("g2:54:00:12:34:56", False, None),
    ],
)
def test_mac_rules(mac: str, valid: bool, unicast: bool | None) -> None:
    fmt = regex_of("failovervms.yaml", "spec.network.mac", "{5}")
    assert bool(fmt.search(mac)) is valid
    if unicast is not None:
        uni = regex_of("failovervms.yaml", "spec.network.mac", "02468ace")
        assert bool(uni.search(mac)) is unicast


@pytest.mark.parametrize(
    ("path", "has_dotdot"),
    [
        ("/var/lib/images/a.qcow2", False),
        ("/var/lib/../etc/shadow", True),
        ("/var/lib/images/..", True),
        ("..", True),
        ("../x", True),
        ("/a/..b/c", False),
        ("/a/b../c", False),
        ("/a/.../c", False),
    ],
)
@pytest.mark.parametrize("field", ["spec.disks[].path", "spec.kernel", "spec.initrd"])
def test_path_dotdot_rule(field: str, path: str, has_dotdot: bool) -> None:
    rx = regex_of("failovervms.yaml", field)
    assert bool(rx.search(path)) is has_dotdot


@pytest.mark.parametrize(
    ("addr", "ok"),
    [
        ("0000:3b:02.1", True),
        ("0000:af:1f.7", True),
        ("0000:3B:02.1", False),
        ("0000:3b:02.8", False),
        ("3b:02.1", False),
        ("0000:3b:02.1x", False),
        ("0000:3b:002.1", False),
    ],
)
def test_pci_address_rule(addr: str, ok: bool) -> None:
    assert bool(regex_of("vfclaims.yaml", "spec.pciAddress").search(addr)) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [("8086", True), ("15b3", True), ("15B3", False), ("0x8086", False), ("808", False), ("80866", False)],
)
@pytest.mark.parametrize("field", ["spec.vendorID", "spec.deviceID"])
def test_pci_id_rules(field: str, value: str, ok: bool) -> None:
    assert bool(regex_of("vfpools.yaml", field).search(value)) is ok


@pytest.mark.parametrize(
    ("path", "value", "ok"),
    [
        ("spec.disks[].name", "root", True),
        ("spec.disks[].name", "data-1", True),
        ("spec.disks[].name", "Data", False),
        ("spec.disks[].name", "-a", False),
        ("spec.disks[].name", "a.b", False),
        ("spec.network.pool", "pool-a", True),
        ("spec.network.pool", "pool.a", True),
        ("spec.network.pool", "Pool", False),
        ("spec.network.pool", "pool_a", False),
    ],
)
def test_openapi_patterns(path: str, value: str, ok: bool) -> None:
    pattern = node_at(root_schema(load("failovervms.yaml")), path)["pattern"]
    assert bool(re.search(pattern, value)) is ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("sandbox-pool", True),
        ("pool.a", True),
        ("a", True),
        ("p" * 63, True),
        ("p" * 64, False),
        ("-pool", False),
        ("pool-", False),
        ("pool/a", False),
    ],
)
def test_vfpool_name_is_a_resource_name_part(name: str, ok: bool) -> None:
    """A VFPool's name is the part after "/" of the extended resource vf.failovervm.io/<name>: a
    qualified name of at most 63 characters. The CRD checks it when a pool is created (names are
    immutable; optionalOldSelf keeps older pools' status writable), as the agent does before it
    advertises one (failovervm.vfresources.valid_pool_name)."""
    from failovervm.vfresources import valid_pool_name

    rules = root_schema(load("vfpools.yaml"))["x-kubernetes-validations"]
    assert all(r.get("optionalOldSelf") is True and r["rule"].startswith("oldSelf.hasValue() || ")
               and r["fieldPath"] == ".metadata.name" for r in rules)
    size = next(r for r in rules if "size() <= 63" in r["rule"])
    within = len(name) <= int(size["rule"].rsplit("<=", 1)[1])
    pattern = regex_of("vfpools.yaml", "")
    assert (within and bool(pattern.search(name))) is ok
    assert valid_pool_name(name) is ok


def test_claim_name_is_a_valid_object_name() -> None:
    """VFClaim names come from failovervm.vfs.claim_name; they must be valid DNS subdomains."""
    from failovervm.vfs import claim_name

    subdomain = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    for node in ("sandbox-node-1", "ip-10-0-0-1.ec2.internal", "n" * 253):
        name = claim_name(node, "0000:3b:02.1")
        assert subdomain.match(name) and len(name) <= 253
