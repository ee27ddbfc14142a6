"""fedtask data plane: the stages every pod of a federated task runs (init, train, aggregate, adjust, publish)."""
from __future__ import annotations

__version__ = "0.1.0"

DEFAULT_PRELOAD_DATASETS = ("mnist", "digits")


def preload(datasets: list[str] | tuple[str, ...] = DEFAULT_PRELOAD_DATASETS) -> None:
    """Import torch and every stage, warm the dataset caches and torch's first-step paths.

    A process forked after this starts a stage (`fedtask_worker.cli.main(argv)`) in milliseconds.
    """
    import numpy as np

    from . import cli, models, partition, training  # noqa: F401
    from . import datasets as registry
    from .stages import STAGES

    for stage in STAGES:
        cli._stage_module(stage)
    cli.build_parser()
    training.configure_threads()
    for name in datasets:
        dataset = registry.load_dataset(name)
        np.asarray(dataset.y_train).sum()  # touch the labels: partitions read them first
    warm = registry.synthetic(num_samples=64, val_samples=16, num_classes=3, shape=(4,))
    model = models.build_model("mlp", warm.input_shape, warm.num_classes, {"hidden": [4]}, seed=0)
    for optimizer in training.OPTIMIZERS:
        training.train_local(model, warm.x_train, warm.y_train, batch_size=32, optimizer=optimizer)
    training.evaluate(model, warm.x_val, warm.y_val)
    training.configure_threads()
