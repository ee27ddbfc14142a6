"""adjustment.learningRateDecay (issue 14 design study): round r fine-tunes at learningRate x decay^(r-1), less
trust in the shared set as the rounds go on; 1 (the default) keeps the rate constant and the pod's flags as they
were."""
from __future__ import annotations

import pytest

from fedtask_operator.core.pods import build_adjust_pod
from fedtask_operator.core.spec import SpecError, parse_task
from fedtask_operator.local.config import RuntimeConfig
from fedtask_worker.stages.adjust import round_learning_rate
from fedtask_worker.tensors import load_arrays
from tests.support.worker import run_stage

DIGITS = ["--dataset", "digits", "--model", "mlp", "--model-args", '{"hidden": [8]}']


@pytest.fixture(autouse=True)
def dataset_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDTASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dataset-cache"))


def test_the_rate_decays_geometrically_from_the_first_round():
    assert round_learning_rate(0.05, 1.0, 20) == 0.05
    assert round_learning_rate(0.05, 0.5, 1) == 0.05
    assert round_learning_rate(0.05, 0.5, 3) == pytest.approx(0.0125)
    assert round_learning_rate(0.1, 0.9, 11) == pytest.approx(0.1 * 0.9 ** 10)


def test_the_adjust_stage_fine_tunes_at_the_decayed_rate(tmp_path, capsys):
    code, _, err = run_stage(["init", "--output", tmp_path / "g.st", *DIGITS], capsys)
    assert code == 0, err
    flags = ["--input", tmp_path / "g.st", *DIGITS, "--round", 3, "--shared-fraction", 0.1, "--learning-rate", 0.2]
    code, constant, err = run_stage(["adjust", *flags, "--output", tmp_path / "constant.st"], capsys)
    assert code == 0, err
    code, decayed, err = run_stage(["adjust", *flags, "--output", tmp_path / "decayed.st",
                                    "--learning-rate-decay", 0.5], capsys)
    assert code == 0, err
    assert constant["adjust_learning_rate"] == pytest.approx(0.2)
    assert decayed["adjust_learning_rate"] == pytest.approx(0.05)
    start, _ = load_arrays(str(tmp_path / "g.st"))
    moved = {}
    for name in ("constant", "decayed"):
        arrays, _ = load_arrays(str(tmp_path / f"{name}.st"))
        moved[name] = sum(float(abs(arrays[key] - start[key]).sum()) for key in start if start[key].dtype.kind == "f")
    assert 0 < moved["decayed"] < moved["constant"]  # a smaller step: the shared set is trusted less in round 3
    for bad in ("0", "1.5", "x"):
        code, _, err = run_stage(["adjust", *flags, "--output", tmp_path / "bad.st", "--learning-rate-decay", bad],
                                 capsys)
        assert code == 2 and "--learning-rate-decay" in err and "(0, 1]" in err and "Traceback" not in err


def task(adjustment: dict) -> dict:
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u"},
            "spec": {"data": {"dataset": "digits"}, "adjustment": adjustment, "devices": {"count": 4, "perRound": 2}}}


def decay_flag(adjustment: dict) -> str | None:
    pod = build_adjust_pod(parse_task(task(adjustment)), RuntimeConfig(store_base_uri="file:///s"), 2)
    args = pod["spec"]["containers"][0]["args"]
    return args[args.index("--learning-rate-decay") + 1] if "--learning-rate-decay" in args else None


def test_the_adjust_pod_carries_the_decay_only_when_it_is_set():
    assert parse_task(task({})).spec.adjustment.learning_rate_decay == 1.0
    assert decay_flag({}) is None
    assert decay_flag({"learningRateDecay": 1}) is None
    assert decay_flag({"learningRateDecay": 0.9}) == "0.9"


@pytest.mark.parametrize("value", [0, -0.5, 1.5])
def test_a_decay_outside_0_1_is_refused_with_its_field_path(value):
    with pytest.raises(SpecError, match=r"adjustment\.learningRateDecay"):
        parse_task(task({"learningRateDecay": value}))
