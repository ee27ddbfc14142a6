"""Model registry: `mlp`, `cnn`, `resnet` (small, for 32x32x3) and user models as `module:callable`.

Built for the dataset's input shape and class count, so `mlp` serves MNIST and digits alike. A user callable is
called as callable(input_shape=..., num_classes=..., **model_args) and must return a torch.nn.Module; for real-valued
targets num_classes is the size of one target (the number of outputs).

Every global model fedtask writes (init, adjust: so the published model and `fedtask run`'s model.safetensors too)
carries in its safetensors metadata what rebuilds it: `load_model(path)` returns the trained torch.nn.Module.
"""
from __future__ import annotations

import dataclasses
import json
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


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a model file says about the model it holds (its safetensors metadata)."""

    model: str  # registry name or module:callable
    model_args: dict
    input_shape: tuple[int, ...]
    num_classes: int  # classes, or for real-valued targets the size of one target
    fedtask_version: str
    metadata: dict[str, str]  # everything, as stored (task, round, stage, dataset, targets, metric, score, ...)


def read_model_info(path: str) -> ModelInfo:
    """The metadata of a model fedtask wrote (a path, file:// or s3:// URI); BadInput for any other file."""
    from .store import local_copy
    from .tensors import read_layout

    with local_copy(path) as local:
        return _model_info(dict(read_layout(local, path).metadata), path)


def _model_info(metadata: dict[str, str], path: str) -> ModelInfo:
    missing = [key for key in ("model", "model_args", "input_shape", "num_classes") if key not in metadata]
    if missing:
        raise BadInput(f"{path}: the metadata lacks {', '.join(missing)}: not a global model written by fedtask "
                       "0.1.0 or later (updates and aggregates carry no model description)")
    try:
        args = json.loads(metadata["model_args"])
        shape = tuple(int(size) for size in json.loads(metadata["input_shape"]))
        num_classes = int(metadata["num_classes"])
    except (ValueError, TypeError) as error:
        raise BadInput(f"{path}: unreadable model metadata ({error})") from None
    if not isinstance(args, dict):
        raise BadInput(f"{path}: metadata model_args is not a JSON object")
    return ModelInfo(metadata["model"], args, shape, num_classes, metadata.get("fedtask_version", ""), metadata)


def load_model(path: str, device: str | torch.device = "cpu") -> nn.Module:
    """The model in a fedtask model file, rebuilt from its metadata, with its weights, in eval mode.

    A `module:callable` model needs its module importable (on PYTHONPATH) here too."""
    from .store import local_copy
    from .tensors import load_arrays
    from .training import load_model_state

    with local_copy(path) as local:
        arrays, metadata = load_arrays(local, path)
    info = _model_info(metadata, path)
    model = build_model(info.model, info.input_shape, info.num_classes, info.model_args)
    load_model_state(model, arrays, path)
    return model.to(device).eval()
