"""Plain functions the stages are thin wrappers over, callable in one in-process loop (benchmarks, simulations).

Two plug points take the user's own code (`module:callable`, see `load_plugin`):

- a **train step** `step(model, inputs, targets) -> loss`: the loss of one batch as a scalar tensor. fedtask adds the
  FedProx term (if any), backpropagates it and steps the optimizer; local training, the server-side adjustment and
  the validation loss all use it. Default: cross-entropy over integer class labels.
- an **evaluation function** `function(model, inputs, targets) -> score | {"score": ..., "loss": ..., ...}`, called
  once per round on the whole validation split and once on the whole test split (tensors on the model's device, under
  `torch.no_grad()`, the model in eval mode). The score takes the place of accuracy (the validation score in
  status.validationAccuracy, targetAccuracy, patience, best; the test score in status.accuracy): higher must be
  better, and it must be finite. Default: classification accuracy.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from .combine import aggregate_states  # noqa: F401 - re-exported: the in-process API lives in one place
from .errors import BadInput, InvalidModel

OPTIMIZERS = ("sgd", "adam")
MAX_METRICS = 16  # extra metrics an evaluation function may report besides score and loss
TrainStep = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EvalFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor], object]


def load_plugin(reference: str | None, flag: str) -> Callable | None:
    """The user's callable for `--train-step`/`--eval-function` (None when not given)."""
    if not reference:
        return None
    from .datasets import load_callable

    return load_callable(reference, flag)


def cross_entropy_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default train step: classification with cross-entropy."""
    return nn.functional.cross_entropy(model(inputs), targets)


def _needs_class_labels(y: np.ndarray, what: str) -> None:
    if not (y.ndim == 1 and y.dtype.kind in "iu"):
        raise BadInput(f"the data has real-valued targets (y {y.dtype}{list(y.shape[1:])}), and the default {what}; "
                       "give your own as module:callable (spec.training.step / spec.evaluation.function)")


def configure_threads() -> int:
    """Torch intra-op threads from FEDTASK_TORCH_THREADS (default 1: pods share nodes; small batches gain nothing)."""
    raw = os.environ.get("FEDTASK_TORCH_THREADS", "1")
    try:
        threads = max(1, int(raw))
    except ValueError:
        raise BadInput(f"FEDTASK_TORCH_THREADS={raw!r} is not an integer") from None
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def compute_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as contiguous CPU numpy arrays (shared tensors appear once per name)."""
    return {name: tensor.detach().cpu().contiguous().numpy() for name, tensor in model.state_dict().items()}


def load_model_state(model: nn.Module, arrays: dict[str, np.ndarray], source: str) -> nn.Module:
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        raise InvalidModel(f"{source}: does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, target in expected.items():
        value = arrays[name]
        if tuple(value.shape) != tuple(target.shape):
            raise InvalidModel(f"{source}: tensor {name!r} has shape {list(value.shape)}, model needs "
                               f"{list(target.shape)}")
        if value.dtype.kind == "f" and value.size and not np.isfinite(value).all():
            raise InvalidModel(f"{source}: tensor {name!r} contains NaN or Inf")
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(torch.from_numpy(np.array(arrays[name], copy=True)))
    return model


def _as_tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs as float32; targets as int64 class labels or float32 values."""
    target_type = np.int64 if np.asarray(y).dtype.kind in "iu" else np.float32
    return _as_tensor(x, np.float32).to(device), _as_tensor(y, target_type).to(device)


def _as_tensor(values: np.ndarray, dtype) -> torch.Tensor:
    array = np.ascontiguousarray(values, dtype=dtype)
    if not array.flags.writeable:  # a slice of a memory-mapped dataset: torch wants memory it may write
        array = array.copy()
    return torch.from_numpy(array)


class Optimizer:
    """SGD (momentum, weight decay) and Adam with torch.optim's update rules, written out: torch.optim's first use
    imports torch._dynamo, which costs seconds per pod start."""

    def __init__(self, parameters: list[torch.Tensor], kind: str, learning_rate: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.parameters, self.kind = [p for p in parameters if p.requires_grad], kind
        self.learning_rate, self.momentum, self.weight_decay = learning_rate, momentum, weight_decay
        self.betas, self.eps, self.steps = betas, eps, 0
        self.first = [None] * len(self.parameters)
        self.second = [None] * len(self.parameters)

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        beta1, beta2 = self.betas
        for index, parameter in enumerate(self.parameters):
            gradient = parameter.grad
            if gradient is None:
                continue
            if self.weight_decay:
                gradient = gradient.add(parameter, alpha=self.weight_decay)
            if self.kind == "sgd":
                if self.momentum:
                    buffer = self.first[index]
                    if buffer is None:
                        buffer = self.first[index] = gradient.clone()
                    else:
                        buffer.mul_(self.momentum).add_(gradient)
                    gradient = buffer
                parameter.add_(gradient, alpha=-self.learning_rate)
                continue
            if self.first[index] is None:
                self.first[index] = torch.zeros_like(parameter)
                self.second[index] = torch.zeros_like(parameter)
            first, second = self.first[index], self.second[index]
            first.mul_(beta1).add_(gradient, alpha=1 - beta1)
            second.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
            corrected = (second / (1 - beta2 ** self.steps)).sqrt_().add_(self.eps)
            parameter.addcdiv_(first, corrected, value=-self.learning_rate / (1 - beta1 ** self.steps))


def _batch_loss(step: TrainStep, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    loss = step(model, inputs, targets)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = list(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise BadInput(f"the train step must return the batch's loss as a scalar tensor, got {shape}")
    return loss.reshape(())


def batch_bounds(count: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch of an epoch: batch_size each; a final remainder under half a batch joins the batch
    before it. A lone last sample would otherwise get a whole step's weight: on a small shared set at the server's
    learning rate, that one step dragged a near-uniform aggregated model to predicting one class (digits: 0.48 -> 0.09
    accuracy from 129 shared samples in batches of 32)."""
    starts = list(range(0, count, batch_size))
    if len(starts) > 1 and count - starts[-1] < batch_size / 2:
        starts.pop()
    return [(start, stops) for start, stops in zip(starts, starts[1:] + [count])]


def _run_epochs(model: nn.Module, updater: Optimizer, batch_loss: Callable[[torch.Tensor], torch.Tensor], count: int,
                epochs: int, batch_size: int, seed: int, diverged: str) -> float:
    """SGD over `epochs` seeded shuffles of `count` samples, `batch_loss(indices)` giving each batch's loss; the last
    epoch's mean loss. A non-finite mean is BadInput(`diverged` formatted with the loss)."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    model.train()
    last_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator).to(device)
        total = torch.zeros((), device=device)
        for start, stop in batch_bounds(count, batch_size):
            batch = order[start:stop]
            loss = batch_loss(batch)
            updater.zero_grad()
            loss.backward()
            updater.step()
            total += loss.detach() * len(batch)
        last_loss = float(total) / count
        if not np.isfinite(last_loss):
            raise BadInput(diverged.format(loss=last_loss))
    return last_loss


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 1, batch_size: int = 32,
                learning_rate: float = 0.05, optimizer: str = "sgd", momentum: float = 0.0,
                weight_decay: float = 0.0, proximal_mu: float = 0.0, seed: int = 0,
                step: TrainStep | None = None) -> tuple[float, int]:
    """Train in place; return (mean loss of the last epoch, samples seen per epoch). FedProx when proximal_mu > 0.

    `step(model, inputs, targets) -> scalar loss tensor` computes a batch's loss (default: cross-entropy)."""
    if optimizer not in OPTIMIZERS:
        raise BadInput(f"--optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if epochs < 0 or batch_size < 1 or not learning_rate > 0:
        raise BadInput("--local-epochs must be >= 0, --batch-size >= 1 and --learning-rate > 0")
    if proximal_mu < 0:
        raise BadInput(f"--proximal-mu {proximal_mu} must be >= 0")
    count = len(y)
    if count == 0 or epochs == 0:
        return 0.0, count
    if step is None:
        _needs_class_labels(np.asarray(y), "train step is classification (cross-entropy over integer class labels)")
    device = next(model.parameters()).device
    inputs, targets = _as_tensors(x, y, device)
    updater = Optimizer(list(model.parameters()), optimizer, learning_rate, momentum, weight_decay)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    loss_function = nn.CrossEntropyLoss()

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        if step is None:
            loss = loss_function(model(inputs[batch]), targets[batch])
        else:
            loss = _batch_loss(step, model, inputs[batch], targets[batch])
        if anchor is not None:
            proximal = sum(torch.sum((p - a) ** 2) for p, a in zip(model.parameters(), anchor))
            loss = loss + proximal_mu / 2 * proximal
        return loss

    last_loss = _run_epochs(model, updater, batch_loss, count, epochs, batch_size, seed,
                            "training diverged (loss {loss}); lower --learning-rate")
    return last_loss, count


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 2048, step: TrainStep | None = None,
             function: EvalFunction | None = None) -> tuple[float, float | None]:
    """(score, loss) on the given split: accuracy and mean cross-entropy by default (see score_model)."""
    metrics = score_model(model, x, y, batch_size, step, function)
    return metrics["score"], metrics.get("loss")


@torch.no_grad()
def score_model(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 2048,
                step: TrainStep | None = None, function: EvalFunction | None = None) -> dict[str, float]:
    """{"score", "loss", extra metrics...} on the given split, every value finite.

    score: `function`'s score, else the accuracy (class labels only). loss: `function`'s loss if it reports one, else
    the mean train-step loss (default step: cross-entropy)."""
    if len(y) == 0:
        raise BadInput("cannot evaluate on an empty split (validation or test)")
    y = np.asarray(y)
    device = next(model.parameters()).device
    model.eval()
    metrics: dict[str, float] = {}
    if function is not None:
        inputs, targets = _as_tensors(x, y, device)
        metrics = _metrics_of(function(model, inputs, targets))
        if "loss" in metrics or (step is None and y.dtype.kind not in "iu"):
            return metrics  # the function's loss, or none: no train step to compute one with
    else:
        _needs_class_labels(y, "evaluation is classification accuracy")
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), batch_size):
        inputs, targets = _as_tensors(x[start:start + batch_size], y[start:start + batch_size], device)
        if step is None:
            logits = model(inputs)
            loss_sum += float(nn.functional.cross_entropy(logits, targets, reduction="sum"))
            if function is None:
                correct += int((logits.argmax(1) == targets).sum())
        else:
            loss_sum += float(_batch_loss(step, model, inputs, targets)) * len(targets)
            if function is None:
                correct += int((model(inputs).argmax(1) == targets).sum())
    loss = loss_sum / len(y)
    if not math.isfinite(loss):
        raise BadInput(f"the evaluation loss is {loss}; the model diverged (lower the learning rate)")
    if function is None:
        metrics["score"] = correct / len(y)
    metrics["loss"] = loss
    return metrics


def _finite_number(value, what: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise BadInput(f"the evaluation function's {what} must be a number, got a tensor of shape "
                           f"{list(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise BadInput(f"the evaluation function's {what} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise BadInput(f"the evaluation function's {what} is {value}; it must be finite")
    return value


def _metrics_of(result) -> dict[str, float]:
    """An evaluation function's result: a score, or a mapping with "score" (and "loss", other metrics)."""
    if not isinstance(result, Mapping):
        return {"score": _finite_number(result, "score")}
    if "score" not in result:
        raise BadInput(f"the evaluation function returned keys {sorted(map(str, result))[:8]}; a mapping needs "
                       "\"score\" (higher is better)")
    if len(result) > MAX_METRICS + 2:
        raise BadInput(f"the evaluation function returned {len(result)} metrics; at most {MAX_METRICS + 2}")
    metrics = {}
    for key, value in result.items():
        name = str(key)
        if len(name) > 64:
            raise BadInput(f"the evaluation function's metric name {name[:64]!r}... is longer than 64 characters")
        metrics[name] = _finite_number(value, repr(name))
    return metrics


def adjust_model(model: nn.Module, x_shared: np.ndarray, y_shared: np.ndarray, epochs: int = 1,
                 batch_size: int = 32, learning_rate: float = 0.01, seed: int = 0,
                 step: TrainStep | None = None) -> float:
    """The server-side adjustment: fine-tune the aggregated model on the globally shared dataset; return its loss."""
    loss, _ = train_local(model, x_shared, y_shared, epochs=epochs, batch_size=batch_size,
                          learning_rate=learning_rate, optimizer="sgd", seed=seed, step=step)
    return loss


@torch.no_grad()
def ensemble_logits(teachers: list[nn.Module], x: np.ndarray, batch_size: int = 2048) -> torch.Tensor:
    """The teachers' mean logits on `x` (FedDF's ensemble), each teacher in eval mode."""
    if not teachers:
        raise BadInput("distillation needs at least one teacher (the round's accepted updates)")
    total: torch.Tensor | None = None
    for teacher in teachers:
        teacher.eval()
        device = next(teacher.parameters()).device
        logits = torch.cat([teacher(_as_tensor(x[start:start + batch_size], np.float32).to(device)).float()
                            for start in range(0, len(x), batch_size)])
        total = logits if total is None else total + logits
    assert total is not None
    return total / len(teachers)


def distill_model(model: nn.Module, teachers: list[nn.Module], x_shared: np.ndarray, y_shared: np.ndarray,
                  weight: float, epochs: int = 1, batch_size: int = 32, learning_rate: float = 0.01,
                  seed: int = 0, temperature: float = 1.0) -> float:
    """The adjustment with FedDF distillation (Lin et al. 2020): fine-tune the aggregated model on the shared inputs
    towards the ensemble of the round's client models (their mean logits, KL at `temperature`), mixed with the
    shared labels' cross-entropy: loss = weight x KL + (1 - weight) x CE. weight 1 is FedDF (labels unused)."""
    if not 0 < weight <= 1:
        raise BadInput(f"--distill {weight} must be in (0, 1]")
    if epochs < 1 or batch_size < 1 or not learning_rate > 0 or not temperature > 0:
        raise BadInput("--epochs, --batch-size >= 1, --learning-rate > 0 and --temperature > 0 required")
    _needs_class_labels(np.asarray(y_shared), "distillation is classification (logits over class labels)")
    device = next(model.parameters()).device
    inputs, targets = _as_tensors(x_shared, y_shared, device)
    soft = nn.functional.softmax(ensemble_logits(teachers, x_shared).to(device) / temperature, dim=1)
    updater = Optimizer(list(model.parameters()), "sgd", learning_rate)

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        logits = model(inputs[batch])
        kl = nn.functional.kl_div(nn.functional.log_softmax(logits / temperature, dim=1), soft[batch],
                                  reduction="batchmean") * temperature ** 2
        loss = weight * kl
        if weight < 1:
            loss = loss + (1 - weight) * nn.functional.cross_entropy(logits, targets[batch])
        return loss

    last_loss = _run_epochs(model, updater, batch_loss, len(y_shared), epochs, batch_size, seed,
                            "distillation diverged (loss {loss}); lower adjustment.learningRate")
    return last_loss
