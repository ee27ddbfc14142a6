"""The CRD: generated from the typed model, structural, and enforcing exactly what the Python validation enforces.

An API server is emulated from the CRD alone (tests/support/crd.py: structural defaulting, strict field validation,
the OpenAPI schema and the CEL rules). Every manifest must be accepted or rejected by it
exactly as `parse_task` accepts or rejects it, with the same field paths.
"""
from __future__ import annotations

import copy
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedtask_operator.core import crd as crdmod
from fedtask_operator.core.spec import TaskStatus, parse_task, spec_to_dict, status_to_dict
from tests.support.crd import (
    CRD,
    ROOT,
    SCHEMA,
    SPEC_SCHEMA,
    api_server_errors,
    cel_errors,
    cel_program,
    draft7,
    paths,
    python_errors,
)

# --------------------------------------------------------------------------------------------------------------------
# The file and its structure


def test_committed_crd_is_the_generated_one():
    assert (ROOT / "crds" / "federatedtask.yaml").read_text() == crdmod.render_crd(), \
        "run: python -m fedtask_operator.core.crd > crds/federatedtask.yaml"
    assert crdmod.main(["--check", str(ROOT / "crds" / "federatedtask.yaml")]) == 0


def test_crd_is_a_valid_custom_resource_definition():
    import kubernetes_validate

    for version in ("1.28.0", "1.37.0"):
        kubernetes_validate.validate(copy.deepcopy(CRD), version, strict=True)


def test_crd_names_printer_columns_and_status_subresource():
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1" and CRD["kind"] == "CustomResourceDefinition"
    assert CRD["metadata"]["name"] == "federatedtasks.fedtask.io"
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("FederatedTask", "federatedtasks",
                                                                     ["ft", "fedtask"])
    (version,) = CRD["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Round", "Stage", "Accuracy", "Age"]
    for column in version["additionalPrinterColumns"][:-1]:
        field = column["jsonPath"].split(".")[-1]
        assert SCHEMA["properties"]["status"]["properties"][field]["type"] == column["type"]


def walk(schema, path="$"):
    yield path, schema
    for key, prop in (schema.get("properties") or {}).items():
        yield from walk(prop, f"{path}.{key}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}.*")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")


def test_schema_is_structural():
    for path, node in walk(SCHEMA):
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            assert "type" not in node, path
        else:
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
            assert "anyOf" not in node and "oneOf" not in node and "allOf" not in node, path
        assert not ("properties" in node and "additionalProperties" in node), path
        assert not (node.get("x-kubernetes-preserve-unknown-fields") and "properties" in node), path
        if node.get("type") == "array":
            assert "items" in node, path
        if path.startswith("$.properties.status"):
            assert "default" not in node, f"{path}: no defaults in status"


def test_every_default_is_valid_and_survives_pruning():
    for path, node in walk(SCHEMA):
        if "default" in node:
            default = node["default"]
            jsonschema.Draft7Validator(draft7(node)).validate(crdmod.apply_defaults(default, node))
            assert crdmod.prune_unknown_fields(default, node) == default, path


def test_rules_with_lists_have_bounded_cost():
    # The API server refuses CEL rules whose estimated cost is unbounded: lists under rules need maxItems.
    for path, node in walk(SCHEMA):
        if node.get("type") == "array" and "[]" not in path:
            items = node["items"]
            if items.get("x-kubernetes-validations") or any(
                    p.get("x-kubernetes-validations") for _, p in walk(items)):
                assert "maxItems" in node, path
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) <= {"rule", "message", "fieldPath", "reason", "messageExpression"}, path
            cel_program(rule["rule"])  # compiles
            # A list or map a rule iterates over (`self.x.all(...)`, `.exists(`, `.exists_one(`) needs a bound.
            for name in re.findall(r"self\.(\w+)\.(?:all|exists|exists_one)\(", rule["rule"]):
                inner = node["properties"][name]
                assert "maxItems" in inner or "maxProperties" in inner, f"{path}.{name}"
            if rule["rule"] == "self == oldSelf":  # equality over the whole value: every part of it must be bounded
                for inner_path, inner in walk(node, path):
                    assert not inner.get("x-kubernetes-preserve-unknown-fields"), inner_path
                    if inner.get("type") == "string":
                        assert "maxLength" in inner, inner_path


def test_defaulting_by_the_api_server_equals_the_typed_model():
    for spec in GOOD_SPECS:
        assert crdmod.apply_defaults(spec, SPEC_SCHEMA) == spec_to_dict(parse_task(
            {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {"name": "t"},
             "spec": spec}).spec), spec


# --------------------------------------------------------------------------------------------------------------------
# Same verdicts


GOOD_SPECS = [
    {},
    {"devices": {"perRound": 2, "minReturned": 1, "count": 2}},
    {"devices": {"perRound": 5, "count": 10, "resources": {"requests": {"cpu": "500m", "nvidia.com/gpu": 1},
                                                          "limits": {"memory": "1Gi"}}}},
    {"data": {"source": "pvc", "claimName": "data-{node}"}, "devices": {"selector": {"matchExpressions": [
        {"key": "gpu", "operator": "Exists"}, {"key": "zone", "operator": "In", "values": ["a", "b"]}]}}},
    {"data": {"source": "hostPath", "hostPath": "/srv/data", "shared": {"fraction": 0, "uri": "s3://b/shared"}}},
    {"adjustment": {"enabled": False}, "data": {"shared": {"fraction": 0}}},
    {"aggregation": {"strategy": "krum", "byzantine": 1}, "training": {"learningRate": 1, "momentum": 0.5}},
    {"aggregation": {"strategy": "krum"}, "devices": {"perRound": 3}},
    {"aggregation": {"strategy": "trimmed-mean", "trimFraction": 0.49}},
    {"devices": {"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
                                 {"key": "k", "operator": "Equal", "value": "v", "tolerationSeconds": 30}]}},
    {"model": {"name": "mypkg.models:build", "args": {"hidden": [64], "x": None}}, "rounds": {"max": 1},
     "storage": {"secretRef": {"name": "creds"}}, "imagePullSecrets": [{"name": "r"}], "suspend": True,
     "activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 0, "scheduling": {"priority": -5, "policy": "random"}},
    {"devices": {"perRound": 3.0, "count": None}, "publish": {"toDevices": True}},
    # Extended resources: a limit equal to the request (1 and "1" are written differently but equal), or only one of
    # them; ordinary resources (cpu, memory, kubernetes.io/*) may differ.
    {"devices": {"resources": {"requests": {"nvidia.com/gpu": 1, "hugepages-2Mi": "64Mi", "cpu": 1},
                               "limits": {"nvidia.com/gpu": "1", "hugepages-2Mi": "64Mi", "cpu": 2,
                                          "example.kubernetes.io/x": 2}}},
     "server": {"resources": {"limits": {"nvidia.com/gpu": 1}}}},
    {"adjustment": {"resources": {"requests": {"amd.com/gpu": 2, "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}},
    {"podTemplate": {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "q", "fedtask.example/x": "y"},
                                  "annotations": {"sidecar.istio.io/inject": "false"}},
                     "runtimeClassName": "nvidia", "schedulerName": "volcano",
                     "env": [{"name": "A", "value": "1"}, {"name": "FEDTASK_TORCH_THREADS", "value": "4"},
                             {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
                     "volumes": [{"name": "code", "configMap": {"name": "code"}}, {"name": "s", "emptyDir": {}},
                                 {"name": "p", "persistentVolumeClaim": {"claimName": "p"}},
                                 {"name": "k", "secret": {"secretName": "k", "optional": True}}],
                     "volumeMounts": [{"name": "code", "mountPath": "/code"}, {"name": "code", "mountPath": "/c2",
                                                                               "subPath": "a/b"}]},
     "server": {"resources": {"requests": {"cpu": 2}}, "nodeSelector": {"pool": "cpu"},
                "tolerations": [{"key": "k", "operator": "Exists"}]}},
]

BAD_SPECS = [
    ({"devices": {"perRound": 0}}, {"spec.devices.perRound"}),
    ({"devices": {"perRound": 3, "minReturned": 4}}, {"spec.devices.minReturned"}),
    ({"devices": {"perRound": 11, "count": 10}}, {"spec.devices.perRound"}),
    ({"devices": {"minReturned": 0}}, {"spec.devices.minReturned"}),
    ({"devices": {"resources": {"requests": {"cpu": "lots"}}}}, {"spec.devices.resources.requests.cpu"}),
    ({"devices": {"resources": {"requests": {"cpu": True}}}}, {"spec.devices.resources.requests.cpu"}),
    ({"devices": {"selector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}},
     {"spec.devices.selector.matchExpressions[0].values"}),
    ({"devices": {"selector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}},
     {"spec.devices.selector.matchExpressions[0].values"}),
    ({"devices": {"selector": {"matchExpressions": [{"operator": "Exists"}]}}},
     {"spec.devices.selector.matchExpressions[0].key"}),
    ({"devices": {"tolerations": [{"operator": "Exists", "value": "v"}]}}, {"spec.devices.tolerations[0].value"}),
    ({"devices": {"tolerations": [{"effect": "Sometimes"}]}}, {"spec.devices.tolerations[0].effect"}),
    ({"data": {"source": "s3"}}, {"spec.data.source"}),
    ({"data": {"source": "hostPath"}, "devices": {"count": 8}}, {"spec.devices.count"}),
    ({"data": {"source": "pvc", "claimName": "shared-claim"}}, {"spec.data.claimName"}),
    ({"data": {"hostPath": "relative/dir"}}, {"spec.data.hostPath"}),
    ({"data": {"partition": {"alpha": 0}}}, {"spec.data.partition.alpha"}),
    ({"data": {"shared": {"fraction": 1.5}}}, {"spec.data.shared.fraction"}),
    ({"data": {"shared": {"fraction": 0}}}, {"spec.adjustment.enabled"}),
    ({"model": {"name": "not a name"}}, {"spec.model.name"}),
    ({"model": {"args": "x"}}, {"spec.model.args"}),
    ({"training": {"learningRate": 0}}, {"spec.training.learningRate"}),
    ({"training": {"momentum": 1}}, {"spec.training.momentum"}),
    ({"training": {"batchSize": 2.5}}, {"spec.training.batchSize"}),
    ({"training": {"optimizer": "rmsprop"}}, {"spec.training.optimizer"}),
    ({"aggregation": {"strategy": "krum", "byzantine": 2}}, {"spec.aggregation.byzantine"}),
    ({"aggregation": {"strategy": "krum", "byzantine": 1}, "devices": {"perRound": 6, "minReturned": 4}},
     {"spec.aggregation.byzantine"}),
    ({"data": {"shared": {"fraction": 1}}}, {"spec.data.shared.fraction"}),
    ({"aggregation": {"trimFraction": 0.5}}, {"spec.aggregation.trimFraction"}),
    ({"aggregation": {"onInvalid": "ignore"}}, {"spec.aggregation.onInvalid"}),
    ({"rounds": {"max": 0}}, {"spec.rounds.max"}),
    ({"rounds": {"targetAccuracy": 1.01, "timeoutSeconds": 0}},
     {"spec.rounds.targetAccuracy", "spec.rounds.timeoutSeconds"}),
    ({"scheduling": {"policy": "fifo"}}, {"spec.scheduling.policy"}),
    ({"storage": {"secretRef": {}}}, {"spec.storage.secretRef.name"}),
    ({"suspend": "no"}, {"spec.suspend"}),
    ({"podRetryLimit": -1}, {"spec.podRetryLimit"}),
    ({"activeDeadlineSeconds": 0}, {"spec.activeDeadlineSeconds"}),
    ({"devices": {"perRond": 3}}, {"spec.devices.perRond"}),
    ({"devices": {"pool": "team-a/shared"}}, {"spec.devices.pool"}),  # pools do not cross namespaces
    ({"devices": {"pool": "Shared"}}, {"spec.devices.pool"}),
    ({"traning": {}}, {"spec.traning"}),
    ({"imagePullSecrets": [{"name": "a"}] * 17}, {"spec.imagePullSecrets"}),
    # spec.podTemplate keeps off what fedtask sets
    ({"podTemplate": {"metadata": {"labels": {"fedtask.io/task": "other"}}}}, {"spec.podTemplate.metadata.labels"}),
    ({"podTemplate": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "me"}}}},
     {"spec.podTemplate.metadata.labels"}),
    ({"podTemplate": {"metadata": {"annotations": {"fedtask.io/x": "y"}}}},
     {"spec.podTemplate.metadata.annotations"}),
    ({"podTemplate": {"metadata": {"labels": {f"l{i}": "v" for i in range(65)}}}},
     {"spec.podTemplate.metadata.labels"}),
    ({"podTemplate": {"metadata": {"labels": {"a": "v" * 64}}}}, {"spec.podTemplate.metadata.labels.a"}),
    ({"podTemplate": {"env": [{"name": "HOME", "value": "/"}, {"name": "FEDTASK_S3_ENDPOINT", "value": "x"},
                              {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}, {"name": "OK", "value": "x"}]}},
     {"spec.podTemplate.env[0].name", "spec.podTemplate.env[1].name", "spec.podTemplate.env[2].name"}),
    ({"podTemplate": {"env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                              {"name": "B", "valueFrom": {}}]}},
     {"spec.podTemplate.env[0].value", "spec.podTemplate.env[1].valueFrom"}),
    ({"podTemplate": {"env": [{"name": "1X"}]}}, {"spec.podTemplate.env[0].name"}),
    ({"podTemplate": {"volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "a"},
                                  {"name": "b", "emptyDir": {}, "configMap": {"name": "c"}}]}},
     {"spec.podTemplate.volumes[0].name", "spec.podTemplate.volumes[1]", "spec.podTemplate.volumes[2]"}),
    ({"podTemplate": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]}},
     {"spec.podTemplate.volumes"}),
    ({"podTemplate": {"volumes": [{"name": "code", "hostPath": {"path": "/"}}]}},
     {"spec.podTemplate.volumes[0].hostPath"}),
    ({"podTemplate": {"volumes": [{"name": "a", "emptyDir": {}}],
                      "volumeMounts": [{"name": "a", "mountPath": "/home/fedtask"},
                                       {"name": "a", "mountPath": "/tmp"}]}},
     {"spec.podTemplate.volumeMounts[0].mountPath", "spec.podTemplate.volumeMounts[1].mountPath"}),
    ({"podTemplate": {"volumes": [{"name": "a", "emptyDir": {}}],
                      "volumeMounts": [{"name": "a", "mountPath": "/x/../etc"}, {"name": "a", "mountPath": "rel"},
                                       {"name": "a", "mountPath": "/ok", "subPath": "../up"}]}},
     {"spec.podTemplate.volumeMounts[0].mountPath", "spec.podTemplate.volumeMounts[1].mountPath",
      "spec.podTemplate.volumeMounts[2].subPath"}),
    ({"podTemplate": {"volumes": [{"name": "a", "emptyDir": {}}],
                      "volumeMounts": [{"name": "b", "mountPath": "/b"}]}}, {"spec.podTemplate.volumeMounts"}),
    ({"podTemplate": {"volumes": [{"name": "a", "emptyDir": {}}],
                      "volumeMounts": [{"name": "a", "mountPath": "/b"}, {"name": "a", "mountPath": "/b"}]}},
     {"spec.podTemplate.volumeMounts"}),
    ({"podTemplate": {"securityContext": {"runAsUser": 0}, "command": ["sh"]}},
     {"spec.podTemplate.securityContext", "spec.podTemplate.command"}),
    ({"podTemplate": {"runtimeClassName": "Not_DNS"}}, {"spec.podTemplate.runtimeClassName"}),
    ({"server": {"resources": {"requests": {"cpu": 1}}}, "adjustment": {"resources": {"limits": {"cpu": 1}}}},
     {"spec.server.resources"}),
    ({"server": {"tolerations": [{"operator": "Exists", "value": "v"}]}}, {"spec.server.tolerations[0].value"}),
    ({"devices": {"resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}}},
     {"spec.devices.resources.limits"}),
    ({"devices": {"resources": {"requests": {"hugepages-1Gi": "1Gi"}, "limits": {"hugepages-1Gi": "2Gi"}}}},
     {"spec.devices.resources.limits"}),
    ({"server": {"resources": {"requests": {"example.com/fpga": "1"}, "limits": {"example.com/fpga": "1000m"}}}},
     {"spec.server.resources.limits"}),
    ({"adjustment": {"resources": {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": 1}}}},
     {"spec.adjustment.resources.limits"}),
    ({"devices": {"resources": {"requests": {f"example.com/r{i}": 1 for i in range(9)}}}},
     {"spec.devices.resources.requests"}),
]


@pytest.mark.parametrize("spec", GOOD_SPECS)
def test_good_specs_pass_both(spec):
    assert api_server_errors(spec) == []
    assert python_errors(spec) == []


@pytest.mark.parametrize("spec, expected", BAD_SPECS)
def test_bad_specs_fail_both_on_the_same_fields(spec, expected):
    assert paths(api_server_errors(spec)) == expected
    assert paths(python_errors(spec)) == expected


def test_python_messages_for_cel_rules_are_the_crds():
    for spec, _ in BAD_SPECS:
        server = [e for e in api_server_errors(spec) if not e.endswith(("minimum", "enum", "type", "pattern",
                                                                          "required", "maximum", "exclusiveMinimum",
                                                                          "exclusiveMaximum", "maxItems", "maxLength",
                                                                          "maxProperties",
                                                                          "unknown field", "anyOf"))]
        for error in server:
            assert error in python_errors(spec)


@pytest.mark.parametrize("where", ["devices", "server", "adjustment"])
def test_an_extended_resource_conflict_names_the_resource_in_both(where):
    spec = {where: {"resources": {"requests": {"nvidia.com/gpu": 1, "hugepages-2Mi": "64Mi", "cpu": 1},
                                  "limits": {"nvidia.com/gpu": 2, "hugepages-2Mi": "64Mi", "cpu": 2}}}}
    expected = f"spec.{where}.resources.limits: the limit of nvidia.com/gpu differs from its request: an extended"
    [server] = api_server_errors(spec)
    assert server.startswith(expected), server
    assert python_errors(spec) == [server]
    # Two conflicts: Python names both; CEL names one (its map order is not defined)
    spec[where]["resources"]["limits"]["hugepages-2Mi"] = "128Mi"
    [server] = api_server_errors(spec)
    assert "the limit of nvidia.com/gpu differs" in server or "the limit of hugepages-2Mi differs" in server, server
    [python] = python_errors(spec)
    assert python.startswith(f"spec.{where}.resources.limits: the limits of nvidia.com/gpu, hugepages-2Mi differ "
                             "from their requests: an extended resource"), python


def leaf_paths(schema, prefix=()):
    for key, prop in (schema.get("properties") or {}).items():
        yield prefix + (key,)
        yield from leaf_paths(prop, prefix + (key,))


SPEC_PATHS = sorted(set(leaf_paths(SPEC_SCHEMA)))
VALUES = st.sampled_from([
    -1, 0, 1, 2, 3, 10, 0.0, 0.5, 0.49, 1.0, 1.5, 2.0, True, False, None, "", "x", "500m", "In", "Exists", "pvc",
    "krum", "fedadam", "/abs", "d-{node}", [], [{"name": "a"}], [{"key": "a", "operator": "In"}], {}, {"a": "b"},
    {"cpu": 1}, {"name": "n"}, {"enabled": False}, {"fraction": 0}])


def set_path(spec, path, value):
    target = spec
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(GOOD_SPECS), edits=st.lists(st.tuples(st.sampled_from(SPEC_PATHS), VALUES),
                                                        min_size=1, max_size=3))
def test_random_edits_get_the_same_verdict(base, edits):
    spec = copy.deepcopy(base)
    for path, value in edits:
        set_path(spec, path, copy.deepcopy(value))
    server, python = api_server_errors(spec), python_errors(spec)
    assert bool(server) == bool(python), (spec, server, python)
    if not python:
        assert crdmod.apply_defaults(spec, SPEC_SCHEMA) == spec_to_dict(parse_task(
            {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {"name": "t"},
             "spec": spec}).spec)


# --------------------------------------------------------------------------------------------------------------------
# Status: what the code writes must survive a real API server


FULL_STATUS = {
    "phase": "Running", "round": 3, "stage": "Training", "accuracy": 0.91, "observedGeneration": 2,
    "shardCount": 10, "message": "round 3 of 20",
    "conditions": [{"type": "Ready", "status": "True", "reason": "RoundRunning", "message": "",
                    "lastTransitionTime": "2026-11-28T04:00:00Z", "observedGeneration": 2}],
    "devices": [{"device": "d001", "node": "n1", "pod": "t-r0003-train-d001", "state": "Running", "reason": "",
                 "attempts": 1, "startTime": "2026-11-28T04:00:00Z", "finishTime": "2026-11-28T04:00:09Z",
                 "result": {"num_samples": 10, "loss": 0.5, "seconds": 1.0, "bytes": 100}}],
    "current": {"stage": "aggregate", "pod": "t-r0003-aggregate", "state": "Running", "attempts": 0,
                "startTime": "2026-11-28T04:00:00Z",
                "result": {"updates": 3, "rejected": [{"uri": "u", "reason": "r"}]}},
    "published": [{"node": "n1", "pod": "t-publish-n1", "state": "Succeeded", "attempts": 0,
                   "result": {"uri": "/models/x"}}],
    "assignment": [{"device": "d001", "node": "n1", "estimatedSeconds": 1.5}],
    "currentRound": {"round": 3, "devices": ["d001"], "startTime": "2026-11-28T04:00:00Z"},
    "history": [{"round": 2, "devices": ["d001", "d002"], "returned": ["d001"], "excluded": ["d002"],
                 "rejected": [], "accuracy": 0.9, "loss": 0.3, "startTime": "2026-11-28T04:00:00Z",
                 "durationSeconds": 4.2, "trainSeconds": 2.0, "aggregateSeconds": 0.5, "adjustSeconds": 1.0,
                 "samples": 300, "uri": "s3://b/r2"}],
    "model": {"uri": "s3://b/final", "round": 20, "accuracy": 0.93},
    "best": {"uri": "s3://b/best", "round": 19, "accuracy": 0.94},
    "participation": {"d001": 3}, "trainSecondsEstimate": {"d001": 1.25},
    "waitingSince": "2026-11-28T04:00:00Z", "roundStartTime": "2026-11-28T04:00:00Z",
    "startTime": "2026-11-28T04:00:00Z", "completionTime": "2026-11-28T05:00:00Z",
}


def test_full_status_is_kept_by_the_api_server_and_valid():
    assert crdmod.unknown_status_fields(FULL_STATUS) == []
    jsonschema.Draft7Validator(draft7(SCHEMA["properties"]["status"]),
                               format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER).validate(FULL_STATUS)


def test_typed_status_round_trip_writes_only_schema_fields():
    from fedtask_operator.core.spec import status_from_dict

    typed = status_from_dict(FULL_STATUS)
    encoded = status_to_dict(typed)
    assert status_from_dict(encoded) == typed
    assert encoded["history"][0] == FULL_STATUS["history"][0] and encoded["model"] == FULL_STATUS["model"]
    assert crdmod.unknown_status_fields(encoded) == []
    assert crdmod.unknown_status_fields(status_to_dict(TaskStatus())) == []


def test_unknown_status_fields_are_found_where_a_server_would_prune():
    status = copy.deepcopy(FULL_STATUS)
    status["roundz"] = 1
    status["devices"][0]["score"] = 2
    status["history"][0]["extra"] = {"a": 1}
    status["participation"]["d009"] = 1  # map entries are fine
    status["devices"][0]["result"]["anything"] = {"goes": 1}  # results are free-form
    assert sorted(crdmod.unknown_status_fields(status)) == ["status.devices[0].score", "status.history[0].extra",
                                                            "status.roundz"]
    pruned = crdmod.prune_unknown_fields({"status": status}, SCHEMA)["status"]
    assert crdmod.unknown_status_fields(pruned) == []
    assert "roundz" not in pruned and pruned["devices"][0]["result"]["anything"] == {"goes": 1}


# --------------------------------------------------------------------------------------------------------------------
# docs/api.md


def test_api_reference_is_current_and_complete():
    from fedtask_operator.core import conditions

    text = (ROOT / "docs" / "api.md").read_text()
    assert crdmod.update_reference(text) == text, "run: python -m fedtask_operator.core.crd --reference"
    documented = 0
    for path, _ in walk(SPEC_SCHEMA, "spec"):
        if path != "spec" and "*" not in path and not path.endswith("[]"):
            assert f"`{path}`" in text, path
            documented += 1
    assert documented > 60
    for name in dir(conditions):
        if name.startswith("REASON_") or name in ("READY", "PROGRESSING", "UNSCHEDULABLE", "SUCCEEDED", "FAILED",
                                                  "SUSPENDED", "STALLED"):
            assert f"`{getattr(conditions, name)}`" in text, name


# --------------------------------------------------------------------------------------------------------------------
# Updates: the CRD's transition rules and validate_update agree


def update_verdicts(old_spec, new_spec):
    from fedtask_operator.core.spec import parse_spec, validate_update

    old = crdmod.apply_defaults(old_spec, SPEC_SCHEMA)
    new = crdmod.apply_defaults(new_spec, SPEC_SCHEMA)
    server = [e for e in cel_errors(new, SPEC_SCHEMA, "spec", old) if e not in cel_errors(new, SPEC_SCHEMA, "spec")]
    python = [str(e) for e in validate_update(parse_spec(old_spec), parse_spec(new_spec))]
    return server, python


@pytest.mark.parametrize("old, new, expected", [
    ({}, {"training": {"learningRate": 0.1}, "rounds": {"max": 50}, "suspend": True}, []),
    ({}, {"devices": {"perRound": 3}, "aggregation": {"onInvalid": "fail"}}, []),
    ({"model": {"name": "mlp"}}, {}, []),  # the default is the same model
    ({}, {"model": {"name": "cnn"}}, ["spec.model.name"]),
    ({"data": {"partition": {"scheme": "classes"}}}, {"data": {"partition": {"scheme": "iid"}}},
     ["spec.data.partition"]),
    ({"devices": {"count": 10}}, {"devices": {"count": 12}}, ["spec.devices.count"]),
    ({"devices": {"count": 10}}, {}, ["spec.devices.count"]),
    ({}, {"storage": {"bucket": "other"}}, ["spec.storage"]),
    ({}, {"model": {"seed": 1}, "data": {"dataset": "digits", "source": "hostPath"}},
     ["spec.model.seed", "spec.data.dataset", "spec.data.source"]),
    ({}, {"data": {"shared": {"fraction": 0.05}}, "model": {"args": {"hidden": 8}}}, ["spec.data.shared"]),
])
def test_immutable_fields_on_update(old, new, expected):
    server, python = update_verdicts(old, new)
    assert sorted(paths(server)) == sorted(expected)
    assert sorted(paths(python)) == sorted(expected)
    assert sorted(server) == sorted(python)



def incomplete_defaults(schema) -> list[str]:
    """Objects whose own CEL rules would meet a default with fields still missing. An API server checks each default
    against the rules of its object as written, before it fills in the nested defaults (apiextensions'
    ValidateDefaults), and refuses the CRD when a rule reads an absent field ("no such key"); cel-python's has() is
    lenient there, so the defaults are checked for completeness instead: nothing left for nested defaulting."""
    incomplete = []
    for path, node in walk(schema):
        rules = [rule for rule in node.get("x-kubernetes-validations", []) if "oldSelf" not in rule["rule"]]
        if "default" in node and rules and crdmod.apply_defaults(node["default"], node) != node["default"]:
            incomplete.append(path)
    return incomplete


def test_defaults_of_objects_with_rules_are_complete():
    assert incomplete_defaults(SCHEMA) == []
    # What a real API server refused: `default: {}` on objects whose rules read fields (spec, data, devices).
    bare = copy.deepcopy(SCHEMA)
    for path, node in walk(bare):
        if path in ("$.spec", "$.spec.data"):
            node["default"] = {}
    assert incomplete_defaults(bare) == ["$.spec", "$.spec.data"]
