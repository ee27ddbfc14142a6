"""The typed FederatedTask model: defaults, validation with field paths, status round trips."""
from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from fedtask_operator.core import conditions as c
from fedtask_operator.core.spec import (
    FederatedTask,
    SpecError,
    TaskStatus,
    parse_task,
    spec_to_dict,
    status_from_dict,
    status_to_dict,
    validate_update,
)


def manifest(spec: dict | None = None, **metadata) -> dict:
    return {
        "apiVersion": "fedtask.io/v1alpha1",
        "kind": "FederatedTask",
        "metadata": {"name": "mnist", "namespace": "team-a", "uid": "u-1", **metadata},
        "spec": spec if spec is not None else {},
    }


def errors_of(obj: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_task(obj)
    return [str(e) for e in info.value.errors]


def test_empty_spec_gets_every_default():
    task = parse_task(manifest())

    assert isinstance(task, FederatedTask)
    assert (task.name, task.namespace, task.uid, task.key) == ("mnist", "team-a", "u-1", "team-a/mnist")
    assert spec_to_dict(task.spec) == {
        "model": {"name": "mlp", "args": {}, "seed": 0, "initialUri": ""},
        "data": {
            "dataset": "mnist", "args": {}, "source": "builtin", "hostPath": "/var/lib/fedtask/data",
            "claimName": "fedtask-data-{node}",
            "partition": {"scheme": "iid", "alpha": 0.5, "classesPerDevice": 2, "seed": 0},
            "shared": {"fraction": 0.01, "uri": ""},
        },
        "devices": {
            "selector": {"matchLabels": {"fedtask.io/device": "true"}, "matchExpressions": []},
            "perRound": 5, "resources": {"requests": {}, "limits": {}}, "tolerations": [], "pool": "",
        },
        "training": {"localEpochs": 1, "batchSize": 32, "learningRate": 0.1, "optimizer": "sgd", "momentum": 0.0,
                     "weightDecay": 0.0, "proximalMu": 0.0, "step": ""},
        "aggregation": {"strategy": "fedavg", "serverLearningRate": 1.0, "serverMomentum": 0.9, "trimFraction": 0.1,
                        "byzantine": 0, "onInvalid": "skip"},
        "adjustment": {"enabled": True, "epochs": 1, "batchSize": 32, "learningRate": 0.05,
                       "learningRateDecay": 1.0, "distillation": 0.0, "resources": {"requests": {}, "limits": {}}},
        "evaluation": {"function": ""},
        "rounds": {"max": 20, "targetAccuracy": 0.0, "patience": 0, "timeoutSeconds": 600},
        "storage": {"bucket": "", "prefix": "", "endpoint": ""},
        "publish": {"toDevices": False, "hostPath": "/var/lib/fedtask/models"},
        "scheduling": {"priority": 0, "policy": "time-fair"},
        "image": "", "imagePullSecrets": [], "serviceAccountName": "", "priorityClassName": "",
        "podTemplate": {"metadata": {"labels": {}, "annotations": {}}, "runtimeClassName": "", "schedulerName": "",
                        "env": [], "volumes": [], "volumeMounts": []},
        "server": {"resources": {"requests": {}, "limits": {}}, "nodeSelector": {}, "tolerations": []},
        "suspend": False, "podRetryLimit": 3, "storeOutageSeconds": 900, "stageTimeoutSeconds": 3600,
        "nodeLostGraceSeconds": 120,
    }
    assert task.spec.devices.quorum == 5


def test_snake_case_attributes_and_quantities_as_int_or_string():
    task = parse_task(manifest({
        "devices": {"perRound": 3, "count": 10, "minReturned": 2,
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": 1}}},
        "training": {"learningRate": 1},
    }))

    assert task.spec.devices.per_round == 3
    assert task.spec.devices.count == 10
    assert task.spec.devices.quorum == 2
    assert task.spec.devices.resources.requests == {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": 1}
    assert task.spec.training.learning_rate == 1.0 and isinstance(task.spec.training.learning_rate, float)


def test_every_problem_is_listed_with_its_field_path():
    problems = errors_of(manifest({
        "devices": {"perRound": 0, "perRond": 2, "resources": {"requests": {"cpu": "5x"}}},
        "training": {"learningRate": "fast", "optimizer": "sgdd"},
        "rounds": {"max": 0},
    }))

    assert problems == [
        "spec.devices.perRond: unknown field",
        "spec.devices.perRound: must be >= 1",
        "spec.devices.resources.requests.cpu: invalid value '5x' (a quantity such as 1, 500m or 2Gi)",
        "spec.training.learningRate: must be a number, not str 'fast'",
        "spec.training.optimizer: must be one of sgd, adam, not 'sgdd'",
        "spec.rounds.max: must be >= 1",
    ]


def test_user_code_hooks_are_module_callable_references_and_the_evaluation_is_immutable():
    task = parse_task(manifest({"training": {"step": "losses:mse"}, "evaluation": {"function": "pkg.metrics:r2"}}))
    assert (task.spec.training.step, task.spec.evaluation.function) == ("losses:mse", "pkg.metrics:r2")

    problems = errors_of(manifest({"training": {"step": "mse"}, "evaluation": {"function": "a b:c"}}))
    assert problems == [
        "spec.training.step: invalid value 'mse' (empty, or module:callable such as mypackage.module:function)",
        "spec.evaluation.function: invalid value 'a b:c' (empty, or module:callable such as "
        "mypackage.module:function)",
    ]
    changed = parse_task(manifest({"evaluation": {"function": "pkg.metrics:mae"}})).spec
    assert [str(e) for e in validate_update(task.spec, changed)] == [
        "spec.evaluation.function: is immutable once the task exists: create a new FederatedTask instead"]


def test_error_message_is_one_line_per_problem():
    with pytest.raises(SpecError) as info:
        parse_task(manifest({"devices": {"perRound": 0}, "suspend": "yes"}))
    assert str(info.value).splitlines() == [
        "spec.devices.perRound: must be >= 1",
        "spec.suspend: must be a boolean, not str 'yes'",
    ]


@pytest.mark.parametrize("spec, expected", [
    ({"devices": {"perRound": 4, "minReturned": 5}}, "spec.devices.minReturned: must be <= perRound"),
    ({"devices": {"perRound": 6, "count": 5}}, "spec.devices.perRound: must be <= count"),
    ({"devices": {"pool": "team-a/shared"}},
     "spec.devices.pool: names a pool of another namespace: a pool is shared only by the tasks of the task's own "
     "namespace (its tasks share devices, their timings and turns, and a higher priority takes devices from the "
     "others, which must not cross a tenant's boundary); name a pool of this namespace, without 'namespace/'"),
    ({"data": {"shared": {"fraction": 0}}},
     "spec.adjustment.enabled: adjustment needs a shared dataset: set data.shared.fraction > 0 or data.shared.uri, "
     "or adjustment.enabled: false"),
    ({"data": {"source": "pvc", "claimName": "one-claim"}},
     "spec.data.claimName: must contain {node} (one claim per device node)"),
    ({"aggregation": {"strategy": "krum", "byzantine": 1}, "devices": {"perRound": 4}},
     "spec.aggregation.byzantine: krum needs devices.minReturned (default perRound) >= 2 * byzantine + 3"),
    ({"devices": {"selector": {"matchExpressions": [{"key": "gpu", "operator": "In"}]}}},
     "spec.devices.selector.matchExpressions[0].values: must be empty for Exists and DoesNotExist and non-empty "
     "for In and NotIn"),
    ({"devices": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
     "spec.devices.tolerations[0].value: must be empty with operator Exists"),
])
def test_cross_field_rules(spec, expected):
    assert errors_of(manifest(spec)) == [expected]


@pytest.mark.parametrize("obj, expected", [
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}},
     ["apiVersion: must be fedtask.io/v1alpha1, not 'v1'", "kind: must be FederatedTask, not 'Pod'"]),
    ({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {}}, ["metadata.name: required"]),
    ({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {"name": "Bad_Name"}},
     ["metadata.name: invalid name 'Bad_Name' (lower-case letters, digits, '-' and '.', at most 253 characters)"]),
    ({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask", "metadata": {"name": "x"}, "spec": [1]},
     ["spec: must be an object, not list"]),
])
def test_object_level_problems(obj, expected):
    assert errors_of(obj) == expected


def test_non_finite_numbers_are_rejected():
    assert errors_of(manifest({"training": {"learningRate": float("nan")}})) == [
        "spec.training.learningRate: must be a finite number"]


def test_booleans_are_not_integers():
    assert errors_of(manifest({"devices": {"perRound": True}})) == [
        "spec.devices.perRound: must be an integer, not bool True"]


def test_status_round_trip_and_unknown_status_fields_ignored():
    status = {
        "phase": "Running", "round": 3, "stage": "Training", "observedGeneration": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "RoundRunning", "message": "",
                        "lastTransitionTime": "2026-11-28T04:00:00Z"}],
        "devices": [{"device": "d001", "node": "n1", "pod": "mnist-r0003-train-d001", "state": "Running",
                     "reason": "", "attempts": 1, "result": {"num_samples": 10, "loss": 0.5}}],
        "history": [{"round": 1, "devices": ["d001"], "returned": ["d001"], "excluded": [], "rejected": [],
                     "accuracy": 0.8, "loss": 0.4, "startTime": "2026-11-28T04:00:00Z", "durationSeconds": 3.5}],
        "participation": {"d001": 2}, "trainSecondsEstimate": {"d001": 1.5},
        "best": {"uri": "file:///x", "round": 1, "accuracy": 0.8},
    }
    parsed = status_from_dict({**status, "unknownThing": 1})

    assert parsed.devices[0].attempts == 1
    assert parsed.history[0].accuracy == 0.8
    encoded = status_to_dict(parsed)
    assert status_from_dict(encoded) == parsed
    assert encoded["best"] == status["best"]
    assert "unknownThing" not in encoded
    assert status_to_dict(TaskStatus()) == {"evaluation": "", "message": "", "conditions": [], "devices": [],
                                            "deviceRows": [], "deviceNodes": [], "deviceReasons": [],
                                            "published": [], "assignment": [], "history": [], "participation": {},
                                            "trainSecondsEstimate": {}}


def test_bad_status_values_are_reported_with_status_paths():
    with pytest.raises(SpecError) as info:
        status_from_dict({"phase": "Exploding", "round": -1})
    assert [str(e) for e in info.value.errors] == [
        "status.phase: must be one of Pending, Running, Succeeded, Failed, Suspended, not 'Exploding'",
        "status.round: must be >= 0",
    ]


def test_parse_does_not_modify_its_input_and_keeps_raw():
    obj = manifest({"model": {"args": {"hidden": [64, 32]}}})
    before = copy.deepcopy(obj)
    task = parse_task(obj)
    task.spec.model.args["hidden"].append(1)
    assert obj == before
    assert task.raw is obj


NOW = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
LATER = datetime(2026, 11, 28, 5, 0, 0, tzinfo=UTC)


def test_set_condition_changes_transition_time_only_when_status_flips():
    first = c.set_condition([], c.READY, True, c.REASON_ROUND_RUNNING, "round 1", NOW)
    same = c.set_condition(first, c.READY, "True", c.REASON_TRAINING, "round 2", LATER)
    flipped = c.set_condition(same, c.READY, False, c.REASON_POD_FAILED, "pod failed", LATER)

    assert first == [{"type": "Ready", "status": "True", "reason": "RoundRunning", "message": "round 1",
                      "lastTransitionTime": "2026-11-28T04:00:00Z"}]
    assert same[0]["lastTransitionTime"] == "2026-11-28T04:00:00Z" and same[0]["message"] == "round 2"
    assert flipped[0]["lastTransitionTime"] == "2026-11-28T05:00:00Z" and flipped[0]["status"] == "False"
    assert first[0]["message"] == "round 1"  # inputs are not modified


def test_set_condition_keeps_other_types_and_order():
    conds = c.set_condition([], c.READY, True, "A", "", NOW)
    conds = c.set_condition(conds, c.PROGRESSING, True, "B", "", NOW)
    conds = c.set_condition(conds, c.READY, False, "C", "", LATER)
    assert [(x["type"], x["status"]) for x in conds] == [("Ready", "False"), ("Progressing", "True")]
    assert c.is_true(conds, c.PROGRESSING) and not c.is_true(conds, c.READY) and not c.is_true(conds, c.FAILED)
    with pytest.raises(ValueError):
        c.set_condition(conds, c.READY, "Maybe", "X", "", NOW)


def test_the_old_backoff_limit_name_says_what_replaced_it():
    assert errors_of(manifest({"backoffLimit": 2})) == [
        "spec.backoffLimit: unknown field: renamed spec.podRetryLimit: it counts the retries of each pod, not the "
        "failed pods of the whole task like a Job's backoffLimit"]
