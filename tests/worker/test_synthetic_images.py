"""The synthetic dataset's `kind: images`: class-structured 3x32x32 images, learnable but not trivially so."""
import numpy as np
import pytest
import torch

from fedtask_worker.datasets import load_dataset, synthetic
from fedtask_worker.errors import BadInput
from fedtask_worker.models import build_model

IMAGES = {"kind": "images", "shape": [3, 32, 32], "num_samples": 600, "val_samples": 200}


def nearest_mean_accuracy(data) -> float:
    """Accuracy of the nearest class mean of the training images: a linear, shift-blind classifier."""
    flat = data.x_train.reshape(len(data.x_train), -1)
    means = np.stack([flat[data.y_train == k].mean(0) for k in range(data.num_classes)])
    test = data.x_test.reshape(len(data.x_test), -1)
    distances = ((test[:, None, :] - means[None]) ** 2).sum(-1)
    return float((distances.argmin(1) == data.y_test).mean())


def test_images_have_the_shape_types_and_all_classes():
    data = synthetic(**IMAGES)
    assert data.x_train.shape == (600, 3, 32, 32) and data.x_val.shape == data.x_test.shape == (200, 3, 32, 32)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.input_shape == (3, 32, 32) and set(np.unique(data.y_train)) == set(range(10))
    again = synthetic(**IMAGES)
    assert np.array_equal(data.x_train, again.x_train) and np.array_equal(data.y_test, again.y_test)
    assert not np.array_equal(data.x_train, synthetic(**IMAGES, seed=1).x_train)


def test_classes_are_learnable_and_noise_and_shifts_make_them_harder():
    easy = nearest_mean_accuracy(synthetic(**{**IMAGES, "noise": 0.3, "shift": 0}))
    hard = nearest_mean_accuracy(synthetic(**{**IMAGES, "noise": 3.0, "shift": 8}))
    assert easy > 0.9
    assert 0.1 < hard < easy - 0.2  # above chance, far from the easy setting


@pytest.mark.slow  # ~10 s alone, more on a busy machine
def test_the_cnn_trains_on_them():
    data = load_dataset("synthetic", {**IMAGES, "noise": 1.0, "shift": 4})
    torch.manual_seed(0)
    model = build_model("cnn", data.input_shape, data.num_classes, {"channels": [8, 16], "hidden": 32}, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(3):
        for start in range(0, len(x), 32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[start:start + 32]), y[start:start + 32]).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean())
    assert accuracy > 0.5  # chance is 0.1


@pytest.mark.parametrize("args, words", [
    ({"kind": "pictures"}, "kind 'pictures'"),
    ({"kind": "images", "shape": [32]}, "[channels, height, width]"),
    ({"kind": "images", "shape": [3, 2, 2]}, "height and width >= 4"),
    ({"kind": "images", "shape": [3, 8, 8], "shift": -1}, "shift >= 0"),
])
def test_bad_arguments_are_refused_clearly(args, words):
    with pytest.raises(BadInput) as caught:
        synthetic(**args)
    assert words in str(caught.value)
