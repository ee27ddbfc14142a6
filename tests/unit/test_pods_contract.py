"""Every pod the builder makes runs a command line the worker accepts: the args are parsed by the worker's own parser
(docs/internals.md, "Worker command line"), and the parsed values are the task's settings."""
from __future__ import annotations

import itertools

import pytest

from fedtask_operator.core.pods import (
    RuntimeConfig,
    build_adjust_pod,
    build_aggregate_pod,
    build_init_pod,
    build_publish_pod,
    build_train_pod,
)
from fedtask_operator.core.scheduling.types import DeviceSlot
from fedtask_operator.core.spec import STRATEGIES, parse_task
from fedtask_worker.cli import build_parser

CONFIG = RuntimeConfig(store_base_uri="s3://fedtask/tasks", credentials_secret="s3")


def make_task(spec: dict):
    return parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": "t", "namespace": "ns", "uid": "u"}, "spec": spec, "status": {"round": 4}})


def parse(pod: dict):
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "fedtask_worker"]
    return build_parser().parse_args(container["args"])


@pytest.mark.parametrize("strategy, round_", list(itertools.product(STRATEGIES, (1, 3))))
def test_aggregate_flags(strategy, round_):
    task = make_task({"aggregation": {"strategy": strategy, "byzantine": 1, "trimFraction": 0.2},
                      "devices": {"perRound": 5}})
    updates = [f"s3://fedtask/tasks/ns/t/u/round-{round_:04d}/updates/d00{i}.safetensors" for i in range(3)]
    args = parse(build_aggregate_pod(task, CONFIG, round_, updates))
    assert (args.stage, args.strategy, args.on_invalid, args.updates) == ("aggregate", strategy, "skip", updates)
    assert (args.byzantine, args.trim_fraction, args.round, args.result_file) == (1, 0.2, round_,
                                                                                 "/dev/termination-log")


@pytest.mark.parametrize("source", ["builtin", "hostPath", "pvc"])
def test_train_flags(source):
    spec = {"data": {"source": source, "dataset": "digits", "partition": {"scheme": "dirichlet", "alpha": 0.3}},
            "training": {"optimizer": "adam", "learningRate": 0.001, "proximalMu": 0.1, "localEpochs": 3},
            "model": {"args": {"hidden": [32]}}}
    if source == "builtin":
        spec["devices"] = {"count": 20}
    device = "d013" if source == "builtin" else "edge-1"
    args = parse(build_train_pod(make_task(spec), CONFIG, 2, DeviceSlot(device, "edge-1")))
    assert (args.optimizer, args.learning_rate, args.proximal_mu, args.local_epochs) == ("adam", 0.001, 0.1, 3)
    assert args.model_args == {"hidden": [32]} and args.dataset == "digits"
    if source == "builtin":
        assert (args.data_source, args.device_index, args.device_count, args.partition, args.alpha) == (
            "builtin", 13, 20, "dirichlet", 0.3)
    else:
        assert (args.data_source, args.data_dir) == ("dir", "/data")


@pytest.mark.parametrize("enabled", [True, False])
def test_init_adjust_publish_flags(enabled):
    task = make_task({"adjustment": {"enabled": enabled, "epochs": 2},
                      "data": {"shared": {"fraction": 0.05, "uri": "s3://b/shared.npz"}},
                      "model": {"initialUri": "s3://b/warm.safetensors", "seed": 7}})
    init = parse(build_init_pod(task, CONFIG))
    assert (init.stage, init.initial_uri, init.seed) == ("init", "s3://b/warm.safetensors", 7)
    adjust = parse(build_adjust_pod(task, CONFIG, 4))
    assert (adjust.no_adjust, adjust.epochs, adjust.shared_fraction, adjust.shared_uri) == (
        not enabled, 2, 0.05, "s3://b/shared.npz")
    publish = parse(build_publish_pod(task, CONFIG, "edge-1", "s3://b/final.safetensors"))
    assert (publish.input, publish.output) == ("s3://b/final.safetensors", "/models/model.safetensors")


@pytest.mark.parametrize("step, function", [("", ""), ("losses:mse_step", ""), ("losses:mse_step", "metrics:r2")])
def test_user_code_flags_reach_train_and_adjust_only_when_set(step, function):
    task = make_task({"training": {"step": step}, "evaluation": {"function": function}, "devices": {"count": 8}})

    train = parse(build_train_pod(task, CONFIG, 1, DeviceSlot("d001", "edge-1")))
    adjust = parse(build_adjust_pod(task, CONFIG, 1))
    init_args = build_init_pod(task, CONFIG)["spec"]["containers"][0]["args"]

    assert train.train_step == (step or None) and not hasattr(train, "eval_function")
    assert (adjust.train_step, adjust.eval_function) == (step or None, function or None)
    assert "--train-step" not in init_args and "--eval-function" not in init_args
