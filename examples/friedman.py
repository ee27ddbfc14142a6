"""Your own code in a FederatedTask, for a task that is not classification: regression on Friedman #1.

Friedman #1 (J. Friedman, "Multivariate adaptive regression splines", 1991; scikit-learn's `make_friedman1`) is
generated here, so the example needs no download: x is uniform on [0, 1]^10 and

    y = 10 sin(pi x0 x1) + 20 (x2 - 0.5)^2 + 10 x3 + 5 x4 + noise        (x5..x9 are irrelevant features)

`friedman-regression.yaml` names the four plug points by `module:callable`; `fedtask run` finds this module next to
the manifest (it puts the manifest's folder on the pods' PYTHONPATH). In a cluster, the module goes into an image
built FROM the worker image (see the README, "Bring your own code").
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def dataset(num_samples: int = 4000, val_samples: int = 1000, features: int = 10, noise: float = 1.0,
            seed: int = 0) -> dict:
    """spec.data.dataset: the train and validation splits as arrays. The targets are floats (real values), so
    the data needs a train step and an evaluation function of its own; they are standardized with the train
    split's mean and deviation, which keeps plain SGD stable."""
    if features < 5:
        raise ValueError(f"Friedman #1 needs at least 5 features, got {features}")
    rng = np.random.default_rng(seed)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(size=(count, features))
        y = (10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
             + noise * rng.standard_normal(count))
        return x.astype(np.float32), y

    x_train, y_train = draw(num_samples)
    x_val, y_val = draw(val_samples)
    mean, deviation = y_train.mean(), y_train.std()
    return {"x_train": x_train, "y_train": ((y_train - mean) / deviation).astype(np.float32),
            "x_val": x_val, "y_val": ((y_val - mean) / deviation).astype(np.float32)}


class Regressor(nn.Module):
    """spec.model.name: called with input_shape=, num_classes= (for real-valued targets: the size of one target,
    here 1) and spec.model.args."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 64):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                                    nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layers(inputs).squeeze(-1)  # (N,), the targets' shape


def mse_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """spec.training.step: the batch's loss; fedtask backpropagates it and steps the optimizer."""
    return nn.functional.mse_loss(model(inputs), targets)


def r2(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """spec.evaluation.function: the coefficient of determination on the validation split as the score (1 is a
    perfect fit, 0 predicting the mean: higher is better, so rounds.targetAccuracy applies), with the loss and
    the RMSE (in standard deviations of the target)."""
    predictions = model(inputs)
    mse = nn.functional.mse_loss(predictions, targets)
    variance = ((targets - targets.mean()) ** 2).mean()
    return {"score": 1 - mse / variance, "loss": mse, "rmse": mse.sqrt()}
