"""Helpers the stages share: model files in the store, dataset/model flags, metadata. No torch at import time."""
from __future__ import annotations

import argparse
import json

import numpy as np

from .. import store
from ..tensors import load_arrays, save_arrays


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"hidden\": [128]}'")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1)")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and data")
    group.add_argument("--model", default="mlp", help="mlp, cnn, resnet, or module:callable returning a "
                       "torch.nn.Module (called with input_shape=, num_classes=, **model-args) (default: mlp)")
    group.add_argument("--model-args", type=json_object, default={}, help="JSON object of model keyword arguments")
    group.add_argument("--dataset", default="mnist", help="mnist, digits, synthetic, or module:callable returning "
                       "{x_train, y_train, x_val, y_val[, x_test, y_test]} arrays or {train, val[, test]} torch "
                       "Datasets (default: mnist)")
    group.add_argument("--dataset-args", type=json_object, default={},
                       help="JSON object of dataset keyword arguments (synthetic: num_samples, num_classes, shape...)")
    group.add_argument("--seed", type=int, default=0, help="seed for model initialisation and shuffling (default: 0)")


def add_plugin_arguments(parser: argparse.ArgumentParser, evaluation: bool = False) -> None:
    group = parser.add_argument_group("your own code (module:callable, importable in the pod)")
    group.add_argument("--train-step", metavar="MODULE:CALLABLE",
                       help="step(model, inputs, targets) -> the batch's loss as a scalar tensor (default: "
                       "cross-entropy over class labels)")
    if evaluation:
        group.add_argument("--eval-function", metavar="MODULE:CALLABLE",
                           help="function(model, inputs, targets) on the whole validation (then test) split -> a "
                           "score or {score, loss, ...}; higher scores are better (default: accuracy)")


def model_metadata(args: argparse.Namespace, dataset) -> dict[str, str]:
    """What rebuilds the model from its file alone (fedtask_worker.models.load_model reads it back)."""
    from .. import __version__

    return {"fedtask_version": __version__, "model": args.model,
            "model_args": json.dumps(args.model_args, sort_keys=True),
            "input_shape": json.dumps(list(dataset.input_shape)), "num_classes": str(dataset.num_classes),
            "targets": "classes" if dataset.classification else "values",
            "target_shape": json.dumps(list(dataset.target_shape)), "dataset": args.dataset}


def metadata(args: argparse.Namespace, stage: str, **extra) -> dict[str, str]:
    values = {"task": args.task or "", "round": str(args.round), "stage": stage}
    values.update({key: str(value) for key, value in extra.items()})
    return values


def write_model(uri: str, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> int:
    with store.writer(uri) as path:
        size = save_arrays(path, arrays, meta)
    return size


def read_model(uri: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with store.local_copy(uri) as path:
        return load_arrays(path, uri)


def build_for_dataset(args: argparse.Namespace):
    """(dataset, model) for the model/data flags; the model is seeded with --seed."""
    from ..datasets import load_dataset
    from ..models import build_model

    dataset = load_dataset(args.dataset, args.dataset_args)
    model = build_model(args.model, dataset.input_shape, dataset.num_classes, args.model_args, seed=args.seed)
    return dataset, model
