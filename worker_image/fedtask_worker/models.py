"""Model registry: `mlp`, `cnn`, `resnet` (small, for 32x32x3) and user models as `module:callable`.

Built for the dataset's input shape and class count, so `mlp` serves MNIST and digits alike. A user callable is
called as callable(input_shape=..., num_classes=..., **model_args) and must return a torch.nn.Module.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .datasets import load_callable
from .errors import BadInput

BUILTIN = ("mlp", "cnn", "resnet")


def mlp(input_shape, num_classes, hidden=(128,)):
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in ([hidden] if isinstance(hidden, int) else hidden):
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        width = int(size)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape, num_classes, channels=(32, 64), hidden=128):
    if len(input_shape) != 3:
        raise BadInput(f"--model cnn needs image inputs (channels, height, width), got shape {list(input_shape)}")
    layers: list[nn.Module] = []
    depth, height, width = input_shape
    for size in channels:
        layers += [nn.Conv2d(depth, size, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        depth, height, width = size, max(height // 2, 1), max(width // 2, 1)
        if height == 1 or width == 1:
            break
    layers += [nn.Flatten(), nn.Linear(depth * height * width, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


class _Block(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet(input_shape, num_classes, widths=(16, 32, 64)):
    """A ResNet-8-style network for small images (e.g. 32x32x3)."""
    if len(input_shape) != 3:
        raise BadInput(f"--model resnet needs image inputs (channels, height, width), got shape {list(input_shape)}")
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                               nn.ReLU()]
    depth = widths[0]
    for index, width in enumerate(widths):
        layers.append(_Block(depth, width, 1 if index == 0 else 2))
        depth = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(depth, num_classes)]
    return nn.Sequential(*layers)


def build_model(name: str, input_shape, num_classes: int, args: dict | None = None, seed: int | None = None):
    args = dict(args or {})
    if seed is not None:
        torch.manual_seed(seed)
    builders = {"mlp": mlp, "cnn": cnn, "resnet": resnet}
    try:
        if name in builders:
            model = builders[name](tuple(input_shape), num_classes, **args)
        elif ":" in name:
            model = load_callable(name, "model")(input_shape=tuple(input_shape), num_classes=num_classes, **args)
        else:
            raise BadInput(f"--model {name!r} is not one of {', '.join(BUILTIN)} or module:callable")
    except TypeError as error:
        raise BadInput(f"--model-args for {name}: {error}") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"--model {name!r} did not return a torch.nn.Module")
    return model
