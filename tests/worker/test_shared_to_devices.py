"""data.shared.toDevices (issue 14 design study): every simulated device also trains on its own random slice of the
server's shared set (Zhao et al. 2018); the pod carries the flag only when it is set."""
from __future__ import annotations

import numpy as np
import pytest

from fedtask_operator.core.pods import build_train_pod
from fedtask_operator.core.scheduling.types import DeviceSlot
from fedtask_operator.core.spec import parse_task
from fedtask_operator.local.config import RuntimeConfig
from fedtask_worker.errors import BadInput
from fedtask_worker.partition import device_indices, shared_indices, shared_slice
from tests.support.worker import run_stage

DIGITS = ["--dataset", "digits", "--model", "mlp", "--model-args", '{"hidden": [8]}']


@pytest.fixture(autouse=True)
def dataset_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDTASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dataset-cache"))


def test_each_device_gets_its_own_slice_of_the_shared_set_only():
    labels = np.repeat(np.arange(10), 100)
    shared = set(shared_indices(labels, 0.1).tolist())
    slices = [shared_slice(labels, 0.1, 0.5, 0, device) for device in range(4)]
    assert all(len(piece) == 50 and set(piece.tolist()) <= shared for piece in slices)
    assert len({tuple(piece.tolist()) for piece in slices}) == 4  # different slices
    assert shared_slice(labels, 0.1, 0.5, 0, 1).tolist() == slices[1].tolist()  # deterministic
    assert len(shared_slice(labels, 0.1, 1.0, 0, 0)) == 100
    shard = set(device_indices(labels, "classes", 0, 10, classes_per_device=1, shared_fraction=0.1).tolist())
    assert not shard & shared
    with pytest.raises(BadInput, match="needs a shared set"):
        shared_slice(labels, 0.0, 0.5, 0, 0)
    with pytest.raises(BadInput, match=r"must be in \(0, 1\]"):
        shared_slice(labels, 0.1, 1.5, 0, 0)


def test_the_train_stage_adds_the_slice_to_the_shard(tmp_path, capsys):
    code, _, err = run_stage(["init", "--output", tmp_path / "g.st", *DIGITS], capsys)
    assert code == 0, err
    flags = ["--global", tmp_path / "g.st", "--output", tmp_path / "u.st", *DIGITS, "--partition", "classes",
             "--classes-per-device", 1, "--device-count", 10, "--shared-fraction", 0.1]
    code, alone, err = run_stage(["train", *flags], capsys)
    assert code == 0, err
    code, with_slice, err = run_stage(["train", *flags, "--shared-to-devices", 0.5], capsys)
    assert code == 0, err
    from fedtask_worker.datasets import load_dataset

    shared = len(shared_indices(load_dataset("digits").y_train, 0.1))
    assert with_slice["num_samples"] == alone["num_samples"] + round(shared / 2)
    code, _, err = run_stage(["train", *flags[:-2], "--shared-to-devices", 0.5], capsys)
    assert code == 2 and "needs a shared set" in err and len(err.strip().splitlines()) == 1


def test_the_train_pod_carries_the_share_as_set_and_by_default_while_the_adjustment_is_on():
    def share(shared: dict, adjustment: bool = True) -> str | None:
        task = parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                           "metadata": {"name": "t", "namespace": "ns", "uid": "u"},
                           "spec": {"data": {"dataset": "digits", "shared": shared},
                                    "adjustment": {"enabled": adjustment},
                                    "devices": {"count": 4, "perRound": 2}}})
        pod = build_train_pod(task, RuntimeConfig(store_base_uri="file:///s"), 1, DeviceSlot(device="d001", node="n"))
        args = pod["spec"]["containers"][0]["args"]
        return args[args.index("--shared-to-devices") + 1] if "--shared-to-devices" in args else None

    assert share({"fraction": 0.05, "toDevices": 0.25}) == "0.25"
    assert share({"fraction": 0.05, "toDevices": 0.25}, adjustment=False) == "0.25"
    assert share({"fraction": 0.05, "toDevices": 0}) is None
    # The default (docs/results.md): the whole builtin shared set while the adjustment is on, none without it.
    assert share({"fraction": 0.05}) == "1.0"
    assert share({"fraction": 0.05}, adjustment=False) is None
    assert share({"fraction": 0.0}, adjustment=False) is None
    assert share({"fraction": 0.05, "uri": "s3://shared/data.safetensors"}) is None
