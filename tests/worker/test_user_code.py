"""The user's own code in the stages: a dataset (arrays or torch Datasets), a model, a train step and an evaluation
function as module:callable, for tasks that are not classification; and the model file anyone can load back."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from fedtask_worker.errors import BadInput
from fedtask_worker.models import load_model, read_model_info
from fedtask_worker.partition import device_indices, shared_indices
from tests.support.worker import run_stage

MODULE = "fedtask_user_code_probe"
SOURCE = textwrap.dedent('''
    import numpy as np
    import torch
    from torch import nn


    def regression(num_samples=600, val_samples=200, seed=0):
        rng = np.random.default_rng(seed)
        weights = rng.standard_normal(5)

        def draw(count):
            x = rng.standard_normal((count, 5)).astype(np.float32)
            return x, (x @ weights + 0.1 * rng.standard_normal(count)).astype(np.float32)

        (x_train, y_train), (x_val, y_val) = draw(num_samples), draw(val_samples)
        return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


    def linear(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), num_classes), nn.Flatten(0))


    def mse_step(model, inputs, targets):
        return nn.functional.mse_loss(model(inputs), targets)


    def vector_step(model, inputs, targets):
        return (model(inputs) - targets) ** 2


    def broken_step(model, inputs, targets):
        raise RuntimeError("shapes do not match")


    def r2(model, inputs, targets):
        mse = nn.functional.mse_loss(model(inputs), targets)
        return {"score": 1 - mse / targets.var(unbiased=False), "rmse": mse.sqrt()}


    def nan_score(model, inputs, targets):
        return float("nan")


    def no_score(model, inputs, targets):
        return {"loss": 1.0}


    def torch_classes(num_samples=300, path=None):
        """The task's splits as torch Datasets; given path= (a device's data folder), that device's Dataset."""
        generator = torch.Generator().manual_seed(0)

        def split(count):
            labels = torch.randint(0, 3, (count,), generator=generator)
            inputs = torch.randn(count, 4, generator=generator) + 2.0 * nn.functional.one_hot(labels, 4).float()
            return torch.utils.data.TensorDataset(inputs, labels)

        return split(40) if path is not None else {"train": split(num_samples), "val": split(100)}


    def not_pairs():
        return {"train": [1, 2, 3], "val": [4]}


    def with_test(negate=True):
        """regression() with a test split of its own: 50 fresh draws, their targets negated when negate."""
        data = regression()
        rng = np.random.default_rng(1)
        weights = np.random.default_rng(0).standard_normal(5)
        x_test = rng.standard_normal((50, 5)).astype(np.float32)
        y_test = (x_test @ weights).astype(np.float32)
        return {**data, "x_test": x_test, "y_test": -y_test if negate else y_test}


    def half_test():
        return {**regression(), "x_test": np.zeros((3, 5), np.float32)}

''')
REGRESSION = ["--dataset", f"{MODULE}:regression", "--model", f"{MODULE}:linear"]


@pytest.fixture(scope="module", autouse=True)
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user-code")
    (folder / f"{MODULE}.py").write_text(SOURCE)
    sys.path.insert(0, str(folder))
    yield
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def start(tmp_path, capsys, *flags) -> str:
    uri = f"file://{tmp_path}/global-0.safetensors"
    code, _, err = run_stage(["init", "--output", uri, *flags], capsys)
    assert code == 0, err
    return uri


def test_regression_round_with_a_train_step_and_an_eval_function(tmp_path, capsys):
    global_0 = start(tmp_path, capsys, *REGRESSION)
    code, before, err = run_stage(["adjust", "--no-adjust", "--input", global_0, "--output", tmp_path / "pass.st",
                                   *REGRESSION, "--train-step", f"{MODULE}:mse_step",
                                   "--eval-function", f"{MODULE}:r2"], capsys)
    assert code == 0, err
    updates = []
    for device in range(2):
        update = f"file://{tmp_path}/updates/d{device}.safetensors"
        code, trained, err = run_stage(["train", "--global", global_0, "--output", update, *REGRESSION,
                                        "--train-step", f"{MODULE}:mse_step", "--device-index", device,
                                        "--device-count", 2, "--shared-fraction", 0.1, "--local-epochs", 5,
                                        "--learning-rate", 0.05, "--round", 1], capsys)
        assert code == 0, err
        assert trained["num_samples"] == 270 and trained["loss"] > 0  # 600 less the shared 10%, in halves
        updates.append(update)
    code, _, err = run_stage(["aggregate", "--output", tmp_path / "aggregate.st", "--base", global_0, "--round", 1,
                              *updates], capsys)
    assert code == 0, err
    final = tmp_path / "global-1.safetensors"
    code, after, err = run_stage(["adjust", "--input", tmp_path / "aggregate.st", "--output", final, *REGRESSION,
                                  "--train-step", f"{MODULE}:mse_step", "--eval-function", f"{MODULE}:r2",
                                  "--shared-fraction", 0.1, "--round", 1], capsys)
    assert code == 0, err

    assert before["accuracy"] < 0.5 < 0.95 < after["accuracy"] <= 1.0  # R² is the score
    assert after["loss"] < before["loss"] and set(after["metrics"]) == {"rmse"}  # loss: the step's on val
    assert after["shared_samples"] == 60
    info = read_model_info(str(final))
    assert (info.model, info.input_shape, info.num_classes, info.metadata["targets"]) == (
        f"{MODULE}:linear", (5,), 1, "values")
    assert (info.metadata["metric"], float(info.metadata["score"])) == (f"{MODULE}:r2",
                                                                      pytest.approx(after["accuracy"], abs=1e-6))
    model = load_model(str(final))
    data = sys.modules[MODULE].regression()
    with torch.no_grad():
        score = sys.modules[MODULE].r2(model, torch.from_numpy(data["x_val"]),
                                       torch.from_numpy(data["y_val"]))["score"]
    assert float(score) == pytest.approx(after["accuracy"], abs=1e-6)


@pytest.mark.parametrize("stage, flags, message", [
    ("train", [], "the default train step is classification"),
    ("adjust", ["--train-step", f"{MODULE}:mse_step"], "the default evaluation is classification accuracy"),
    ("adjust", ["--train-step", f"{MODULE}:mse_step", "--eval-function", f"{MODULE}:nan_score"],
     "score is nan; it must be finite"),
    ("adjust", ["--train-step", f"{MODULE}:mse_step", "--eval-function", f"{MODULE}:no_score"], 'needs "score"'),
    ("train", ["--train-step", f"{MODULE}:vector_step"], "must return the batch's loss as a scalar tensor"),
    ("train", ["--train-step", "no_such_module_anywhere:step"], "puts the manifest's folder on PYTHONPATH"),
    ("train", ["--partition", "dirichlet", "--train-step", f"{MODULE}:mse_step"], "only iid applies"),
])
def test_user_code_mistakes_are_one_line_errors_with_exit_2(tmp_path, capsys, stage, flags, message):
    global_0 = start(tmp_path, capsys, *REGRESSION)
    where = ["--global", global_0] if stage == "train" else ["--input", global_0, "--shared-fraction", 0.1]
    code, _, err = run_stage([stage, *where, "--output", tmp_path / "out.st", *REGRESSION, *flags], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
    if "default" in message:
        assert "spec.training.step / spec.evaluation.function" in err


def test_validation_decides_and_the_test_split_is_reported(tmp_path, capsys):
    """validation_accuracy is the validation split's score, accuracy the test split's (here its targets are negated,
    so a model that fits the data scores R² < 0 on it); without a test split the validation split stands in."""
    scores = {}
    for dataset in ("with_test", "regression"):
        flags = ["--dataset", f"{MODULE}:{dataset}", "--model", f"{MODULE}:linear"]
        global_0 = start(tmp_path, capsys, *flags)
        code, scores[dataset], err = run_stage(
            ["adjust", "--input", global_0, "--output", tmp_path / f"{dataset}.st", *flags, "--train-step",
             f"{MODULE}:mse_step", "--eval-function", f"{MODULE}:r2", "--shared-fraction", 0.1, "--epochs", 20,
             "--learning-rate", 0.05], capsys)
        assert code == 0, err
    own, stand_in = scores["with_test"], scores["regression"]
    assert own["validation_accuracy"] > 0.5 > 0 > own["accuracy"], own
    assert (own["test_split"], own["test_samples"], own["validation_samples"]) == ("test", 50, 200)
    assert stand_in["test_split"] == "validation" and stand_in["accuracy"] == stand_in["validation_accuracy"]
    assert stand_in["loss"] == stand_in["validation_loss"]
    metadata = read_model_info(str(tmp_path / "with_test.st")).metadata
    assert metadata["score_split"] == "test" and float(metadata["validation_score"]) > 0.5 > 0 > float(
        metadata["score"])
    code, _, err = run_stage(["init", "--output", tmp_path / "g.st", "--dataset", f"{MODULE}:half_test"], capsys)
    assert code == 2 and "only one of x_test and y_test" in err, err


def test_user_code_that_raises_is_named_with_its_field_and_may_be_retried(tmp_path, capsys):
    global_0 = start(tmp_path, capsys, *REGRESSION)
    code, _, err = run_stage(["train", "--global", global_0, "--output", tmp_path / "out.st", *REGRESSION,
                              "--train-step", f"{MODULE}:broken_step"], capsys)
    assert code == 1, err  # not bad input: the planner retries it within podRetryLimit
    assert f"{MODULE}:broken_step (spec.training.step) raised RuntimeError: shapes do not match" in err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


def test_a_dataset_of_torch_datasets_trains_a_builtin_model(tmp_path, capsys):
    flags = ["--dataset", f"{MODULE}:torch_classes", "--model", "mlp", "--model-args", '{"hidden": [8]}']
    global_0 = start(tmp_path, capsys, *flags)
    info = read_model_info(global_0)
    assert (info.input_shape, info.num_classes, info.metadata["targets"]) == ((4,), 3, "classes")
    code, trained, err = run_stage(["train", "--global", global_0, "--output", tmp_path / "u.st", *flags,
                                    "--partition", "classes", "--device-count", 3], capsys)
    assert code == 0 and trained["num_samples"] > 0, err
    code, trained, err = run_stage(["train", "--global", global_0, "--output", tmp_path / "u.st", *flags,
                                    "--data-source", "dir", "--data-dir", tmp_path], capsys)
    assert code == 0 and trained["num_samples"] == 40, err  # the device's own data: callable(path=) -> Dataset


def test_a_dataset_that_is_not_pairs_names_the_item(tmp_path, capsys):
    code, _, err = run_stage(["init", "--output", tmp_path / "g.st", "--dataset", f"{MODULE}:not_pairs"], capsys)
    assert code == 2 and f"{MODULE}:not_pairs train[0]: must be an (input, target) pair" in err, err


def test_shared_set_and_shards_of_real_valued_targets():
    targets = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    shared = shared_indices(targets, 0.05)
    shards = [device_indices(targets, "iid", index, 4, shared_fraction=0.05) for index in range(4)]
    assert len(shared) == 50 == len(set(shared.tolist()))
    assert sorted(np.concatenate([shared, *shards]).tolist()) == list(range(1000))
    with pytest.raises(BadInput, match="classes splits by class label"):
        device_indices(targets, "classes", 0, 4)


def test_load_model_rebuilds_a_builtin_model_and_refuses_an_update(tmp_path, capsys):
    flags = ["--dataset", "digits", "--model", "mlp", "--model-args", '{"hidden": [16]}']
    global_0 = start(tmp_path, capsys, *flags)
    model = load_model(global_0)
    assert not model.training and model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert read_model_info(global_0).model_args == {"hidden": [16]}
    code, _, err = run_stage(["train", "--global", global_0, "--output", tmp_path / "update.st", *flags], capsys)
    assert code == 0, err
    with pytest.raises(BadInput, match="not a global model written by fedtask"):
        load_model(str(tmp_path / "update.st"))
