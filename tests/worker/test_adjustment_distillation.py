"""adjustment.distillation (FedDF, issue 14 design study): the adjust stage distils the ensemble of the round's
accepted client models (their mean logits on the shared inputs) into the aggregated model; the planner names them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtask_operator.core.pods import build_adjust_pod
from fedtask_operator.core.spec import SpecError, parse_task
from fedtask_operator.local.config import RuntimeConfig
from fedtask_worker.datasets import load_dataset
from fedtask_worker.models import build_model
from fedtask_worker.tensors import load_arrays
from fedtask_worker.training import ensemble_logits, load_model_state
from tests.support.worker import run_stage

DIGITS = ["--dataset", "digits", "--model", "mlp", "--model-args", '{"hidden": [16]}']


@pytest.fixture(autouse=True)
def dataset_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FEDTASK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dataset-cache"))


def predictions(path, x: np.ndarray) -> np.ndarray:
    dataset = load_dataset("digits")
    model = build_model("mlp", dataset.input_shape, dataset.num_classes, {"hidden": [16]})
    arrays, _ = load_arrays(str(path))
    load_model_state(model, arrays, str(path))
    return ensemble_logits([model], x).argmax(1).numpy()


def test_the_student_learns_the_teachers_ensemble_not_only_the_labels(tmp_path, capsys):
    for seed, name in ((0, "student"), (7, "teacher")):  # an untrained teacher: its "knowledge" is not the labels'
        code, _, err = run_stage(["init", "--output", tmp_path / f"{name}.st", *DIGITS, "--seed", seed], capsys)
        assert code == 0, err
    flags = ["--input", tmp_path / "student.st", *DIGITS, "--round", 1, "--shared-fraction", 0.3, "--epochs", 20,
             "--learning-rate", 0.5]
    teacher = str(tmp_path / "teacher.st")
    code, plain, err = run_stage(["adjust", *flags, "--output", tmp_path / "plain.st"], capsys)
    assert code == 0, err
    code, distilled, err = run_stage(["adjust", *flags, "--output", tmp_path / "distilled.st", "--distill", 1,
                                      teacher, teacher], capsys)
    assert code == 0, err
    assert distilled["teachers"] == 2 and "teachers" not in plain
    x = load_dataset("digits").x_val
    target = predictions(teacher, x)
    agreement = {name: float((predictions(tmp_path / f"{name}.st", x) == target).mean())
                 for name in ("student", "plain", "distilled")}
    assert agreement["distilled"] > 0.8, agreement  # FedDF follows the ensemble...
    assert agreement["plain"] < 0.5 and agreement["distilled"] > agreement["plain"] + 0.3, agreement  # ...labels don't
    assert distilled["accuracy"] < plain["accuracy"]  # and a wrong teacher costs accuracy: weight 1 ignores labels


def test_a_weight_below_1_keeps_the_labels(tmp_path, capsys):
    for seed, name in ((0, "student"), (7, "teacher")):
        code, _, err = run_stage(["init", "--output", tmp_path / f"{name}.st", *DIGITS, "--seed", seed], capsys)
        assert code == 0, err
    flags = ["--input", tmp_path / "student.st", *DIGITS, "--round", 1, "--shared-fraction", 0.3, "--epochs", 20,
             "--learning-rate", 0.5]
    accuracy = {}
    for weight in (0, 0.5, 1):
        extra = ["--distill", weight, tmp_path / "teacher.st"] if weight else []
        code, result, err = run_stage(["adjust", *flags, "--output", tmp_path / f"w{weight}.st", *extra], capsys)
        assert code == 0, err
        accuracy[weight] = result["accuracy"]
    # an uninformed ensemble's near-uniform targets cost little while the labels keep half the weight
    assert accuracy[0.5] > accuracy[1] + 0.5 and accuracy[0] > accuracy[1] + 0.5, accuracy


def test_bad_distillation_input_gets_one_clear_line(tmp_path, capsys):
    code, _, err = run_stage(["init", "--output", tmp_path / "g.st", *DIGITS], capsys)
    assert code == 0, err
    flags = ["adjust", "--input", tmp_path / "g.st", "--output", tmp_path / "o.st", *DIGITS, "--shared-fraction", 0.1]
    cases = [([*flags, "--distill", 1], "needs the round's client models"),
             ([*flags, tmp_path / "g.st"], "only read with --distill"),
             ([*flags, "--distill", 1.5, tmp_path / "g.st"], "[0, 1]"),
             ([*flags, "--distill", 1, tmp_path / "missing.st"], "missing.st"),
             ([*flags, "--distill", 1, "--train-step", "math:fabs", tmp_path / "g.st"], "default train step")]
    for argv, message in cases:
        code, _, err = run_stage(argv, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)


def test_ensemble_logits_are_the_teachers_mean():
    torch.manual_seed(0)
    teachers = [torch.nn.Linear(4, 3) for _ in range(3)]
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    with torch.no_grad():
        expected = sum(t(torch.from_numpy(x)) for t in teachers) / 3
    assert torch.allclose(ensemble_logits(teachers, x), expected, atol=1e-6)


def task(adjustment: dict, training: dict | None = None) -> dict:
    return {"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u"},
            "spec": {"data": {"dataset": "digits"}, "adjustment": adjustment, "training": training or {},
                     "devices": {"count": 4, "perRound": 2}}}


def test_the_adjust_pod_names_the_teachers_only_with_distillation():
    def args(adjustment: dict) -> list[str]:
        pod = build_adjust_pod(parse_task(task(adjustment)), RuntimeConfig(store_base_uri="file:///s"), 2,
                               teacher_uris=["file:///s/u1.st", "file:///s/u2.st"])
        return pod["spec"]["containers"][0]["args"]

    assert parse_task(task({})).spec.adjustment.distillation == 0
    assert "--distill" not in args({}) and "file:///s/u1.st" not in args({})
    assert "--distill" not in args({"enabled": False, "distillation": 1})
    tail = args({"distillation": 0.5})
    assert tail[tail.index("--distill"):] == ["--distill", "0.5", "file:///s/u1.st", "file:///s/u2.st"]


def test_distillation_with_a_custom_train_step_is_refused_at_the_spec():
    with pytest.raises(SpecError, match=r"adjustment\.distillation.*default train step"):
        parse_task(task({"distillation": 1}, {"step": "mymodule:loss"}))
    with pytest.raises(SpecError, match=r"adjustment\.distillation"):
        parse_task(task({"distillation": 1.5}))


def test_the_planner_hands_the_adjust_pod_the_accepted_updates_only():
    from tests.support.planner import Cluster, make_task

    cluster = Cluster(make_task(adjustment={"distillation": 1.0}))
    cluster.advance_until(lambda: "mnist-r0001-aggregate" in cluster.pods, limit=6)
    updates = "s3://fedtask/tasks/default/mnist/uid-1/round-0001/updates/"
    cluster.succeed("mnist-r0001-aggregate", {"updates": 2, "rejected": [
        {"uri": updates + "d001.safetensors", "reason": "non-finite values in fc1.weight"}], "seconds": 0.1,
        "bytes": 10})
    cluster.reconcile()
    args = cluster.pods["mnist-r0001-adjust"]["spec"]["containers"][0]["args"]
    returned = sorted(r["device"] for r in cluster.status["devices"] if r["state"] == "Succeeded")
    assert "d001" in returned and len(returned) == 3
    assert args[args.index("--distill"):] == ["--distill", "1.0"] + [
        f"{updates}{device}.safetensors" for device in returned if device != "d001"]
    plain = Cluster(make_task())
    plain.advance_until(lambda: "mnist-r0001-adjust" in plain.pods, limit=8)
    assert not any("/updates/" in str(a) for a in plain.pods["mnist-r0001-adjust"]["spec"]["containers"][0]["args"])
