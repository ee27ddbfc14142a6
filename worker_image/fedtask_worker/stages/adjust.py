"""adjust: fine-tune the aggregated model on the globally shared dataset (the server-side adjustment), evaluate it on
the validation and the test split and write it as the next global model, with what rebuilds it and its scores in the
metadata. With --no-adjust: evaluate and pass through.

Scores are the evaluation function's, else the classification accuracy. The result's `validation_accuracy` (and
`validation_loss`) is the validation split's score: the planner compares it for rounds.targetAccuracy,
rounds.patience and status.best. `accuracy`, `loss` and `metrics` are the test split's: reported, never decided on.
`test_split` says which split that was ("test", or "validation" when the dataset has no test split of its own)."""
from __future__ import annotations

import argparse
import time

import numpy as np

from .. import store
from ..errors import BadInput
from .common import (
    add_model_arguments,
    add_plugin_arguments,
    build_for_dataset,
    fraction,
    metadata,
    model_metadata,
    read_model,
    write_model,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="URI of the aggregated model")
    parser.add_argument("--output", required=True, help="URI to write the next global model to")
    parser.add_argument("--no-adjust", action="store_true", help="skip fine-tuning: evaluate and pass through")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs on the shared set (default: 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="(default: 0.01)")
    parser.add_argument("--learning-rate-decay", type=decay_factor, default=1.0,
                        help="round r fine-tunes at learning-rate x decay^(r-1): less trust in the shared set as "
                             "the rounds go on (default: 1, a constant rate)")
    parser.add_argument("--shared-fraction", type=fraction, default=0.02,
                        help="class-balanced fraction of the train split forming the shared set (default: 0.02)")
    parser.add_argument("--shared-uri", help="the shared set as an object (safetensors or npz with x, y) instead")
    parser.add_argument("--distill", type=distill_weight, default=0.0,
                        help="FedDF: weight in [0, 1] of distilling the teachers' ensemble (their mean logits on the "
                             "shared inputs) against the shared labels' cross-entropy; 1 is FedDF, 0 plain "
                             "fine-tuning (default: 0)")
    parser.add_argument("teachers", nargs="*", metavar="TEACHER",
                        help="with --distill: URIs of the round's accepted client models (the ensemble)")
    add_model_arguments(parser)
    add_plugin_arguments(parser, evaluation=True)


def decay_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in (0, 1]")
    return value


def distill_weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]")
    return value


def round_learning_rate(learning_rate: float, decay: float, round_: int) -> float:
    """The adjustment's learning rate in round `round_` (from 1): geometric decay across rounds."""
    return learning_rate * decay ** max(round_ - 1, 0)


def shared_set(args: argparse.Namespace, dataset) -> tuple[np.ndarray, np.ndarray]:
    from ..datasets import validate_arrays
    from ..partition import shared_indices

    if args.shared_uri:
        with store.local_copy(args.shared_uri) as path:
            with open(path, "rb") as stream:
                magic = stream.read(4)
            if magic == b"PK\x03\x04":
                try:
                    with np.load(path, allow_pickle=False) as archive:
                        arrays = {"x": archive["x"], "y": archive["y"]}
                except (KeyError, ValueError, OSError) as error:
                    raise BadInput(f"{args.shared_uri}: not an npz with arrays x and y ({error})") from None
            else:
                from ..tensors import load_arrays

                arrays, _ = load_arrays(path, args.shared_uri)
        if "x" not in arrays or "y" not in arrays:
            raise BadInput(f"{args.shared_uri}: the shared set needs tensors x and y")
        return validate_arrays(args.shared_uri, arrays["x"], arrays["y"])
    if args.shared_fraction <= 0:
        raise BadInput("adjustment needs a shared set: --shared-fraction > 0 or --shared-uri")
    indices = shared_indices(dataset.y_train, args.shared_fraction)
    return dataset.x_train[indices], dataset.y_train[indices]


def distilled(args: argparse.Namespace, model, x: np.ndarray, y: np.ndarray, learning_rate: float, seed: int,
              step) -> float:
    """FedDF: the adjustment towards the ensemble of the round's client models (training.distill_model)."""
    import copy

    from ..training import distill_model, load_model_state

    if step is not None:
        raise BadInput("--distill needs the default train step (classification logits); it cannot be used with "
                       "--train-step (spec.training.trainStep)")
    if not args.teachers:
        raise BadInput("--distill needs the round's client models as TEACHER URIs")
    teachers = []
    for uri in args.teachers:
        teacher = copy.deepcopy(model)
        arrays, _ = read_model(uri)
        load_model_state(teacher, arrays, uri)
        teachers.append(teacher)
    return distill_model(model, teachers, x, y, args.distill, args.epochs, args.batch_size, learning_rate, seed=seed)


def run(args: argparse.Namespace) -> dict:
    from ..training import (
        adjust_model,
        compute_device,
        configure_threads,
        load_model_state,
        load_plugin,
        model_state,
        score_model,
    )

    started = time.perf_counter()
    configure_threads()
    step = load_plugin(args.train_step, "train-step")
    function = load_plugin(args.eval_function, "eval-function")
    arrays, _ = read_model(args.input)
    dataset, model = build_for_dataset(args)
    load_model_state(model, arrays, args.input)
    model.to(compute_device())
    result: dict = {}
    if args.teachers and not args.distill > 0:
        raise BadInput("TEACHER URIs are only read with --distill > 0")
    if not args.no_adjust:
        x, y = shared_set(args, dataset)
        learning_rate = round_learning_rate(args.learning_rate, args.learning_rate_decay, args.round)
        seed = args.seed * 100003 + args.round
        if args.distill > 0:
            loss = distilled(args, model, x, y, learning_rate, seed, step)
            result["teachers"] = len(args.teachers)
        else:
            loss = adjust_model(model, x, y, args.epochs, args.batch_size, learning_rate, seed=seed, step=step)
        result["adjust_loss"] = round(loss, 6)
        result["adjust_learning_rate"] = learning_rate
        result["shared_samples"] = int(len(y))
        arrays = model_state(model)
    validation = score_model(model, dataset.x_val, dataset.y_val, step=step, function=function)
    if dataset.test_is_validation:
        metrics = dict(validation)
    else:
        metrics = score_model(model, dataset.x_test, dataset.y_test, step=step, function=function)
    score, loss = metrics.pop("score"), metrics.pop("loss", None)
    metric = args.eval_function or "accuracy"
    test_split = "validation" if dataset.test_is_validation else "test"
    meta = metadata(args, "adjust", adjusted=str(not args.no_adjust).lower(), **model_metadata(args, dataset),
                    metric=metric, score=repr(score), score_split=test_split,
                    validation_score=repr(validation["score"]))
    size = write_model(args.output, arrays, meta)
    result["accuracy"] = round(score, 6)
    if loss is not None:
        result["loss"] = round(loss, 6)
    if metrics:
        result["metrics"] = {name: round(value, 6) for name, value in metrics.items()}
    result["validation_accuracy"] = round(validation["score"], 6)
    if validation.get("loss") is not None:
        result["validation_loss"] = round(validation["loss"], 6)
    result.update({"test_split": test_split, "test_samples": int(len(dataset.y_test)),
                   "validation_samples": int(len(dataset.y_val))})
    result.update({"bytes": size, "seconds": round(time.perf_counter() - started, 4)})
    return result
