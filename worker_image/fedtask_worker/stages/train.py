"""train: read the global model, train on this device's data, write the update with num_samples."""
from __future__ import annotations

import argparse
import time

from ..errors import BadInput
from .common import (
    add_model_arguments,
    add_plugin_arguments,
    build_for_dataset,
    fraction,
    metadata,
    read_model,
    write_model,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--global", dest="global_uri", required=True, help="URI of the current global model")
    parser.add_argument("--output", required=True, help="URI to write this device's update to")
    add_model_arguments(parser)
    add_plugin_arguments(parser)
    data = parser.add_argument_group("device data")
    data.add_argument("--data-source", choices=("builtin", "dir"), default="builtin",
                      help="builtin: a simulated device's shard of --dataset; dir: npz files (x, y) in --data-dir "
                      "or a module:callable --dataset given path= (default: builtin)")
    data.add_argument("--data-dir", help="the device's data folder (with --data-source dir)")
    data.add_argument("--partition", choices=("iid", "dirichlet", "classes"), default="iid",
                      help="how the dataset is split into device shards (default: iid)")
    data.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: 0.5)")
    data.add_argument("--classes-per-device", type=int, default=2, help="shards per device for 'classes' (default: 2)")
    data.add_argument("--partition-seed", type=int, default=0, help="seed of the partition (default: 0)")
    data.add_argument("--device-index", type=int, default=0, help="this device's shard index (default: 0)")
    data.add_argument("--device-count", type=int, default=1, help="number of shards (default: 1)")
    data.add_argument("--shared-fraction", type=fraction, default=0.0,
                      help="fraction of the train split held by the server as the shared set, excluded from every "
                      "shard (default: 0)")
    data.add_argument("--shared-to-devices", type=float, default=0.0,
                      help="builtin data: this share of the shared set (a random slice per device) joins the device's "
                      "shard, as in Zhao et al. 2018 (default: 0)")
    optimisation = parser.add_argument_group("local training")
    optimisation.add_argument("--local-epochs", type=int, default=1, help="epochs over the local data (default: 1)")
    optimisation.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    optimisation.add_argument("--learning-rate", type=float, default=0.05, help="(default: 0.05)")
    optimisation.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="(default: sgd)")
    optimisation.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default: 0)")
    optimisation.add_argument("--weight-decay", type=float, default=0.0, help="(default: 0)")
    optimisation.add_argument("--proximal-mu", type=float, default=0.0,
                              help="FedProx proximal term weight mu (default: 0 = plain FedAvg training)")


def device_data(args: argparse.Namespace, dataset):
    import numpy as np

    from ..datasets import load_device_folder
    from ..partition import device_indices, shared_slice

    if args.data_source == "dir":
        if not args.data_dir:
            raise BadInput("--data-source dir needs --data-dir")
        return load_device_folder(args.data_dir, args.dataset if ":" in args.dataset else None, args.dataset_args)
    indices = device_indices(dataset.y_train, args.partition, args.device_index, args.device_count,
                             seed=args.partition_seed, alpha=args.alpha, classes_per_device=args.classes_per_device,
                             shared_fraction=args.shared_fraction)
    if args.shared_to_devices > 0:
        indices = np.concatenate([indices, shared_slice(dataset.y_train, args.shared_fraction, args.shared_to_devices,
                                                        args.partition_seed, args.device_index)])
    return dataset.x_train[indices], dataset.y_train[indices]


def run(args: argparse.Namespace) -> dict:
    from ..training import (
        compute_device,
        configure_threads,
        load_model_state,
        load_plugin,
        model_state,
        train_local,
    )

    started = time.perf_counter()
    configure_threads()
    step = load_plugin(args.train_step, "train-step")
    global_arrays, _ = read_model(args.global_uri)
    dataset, model = build_for_dataset(args)  # the task's dataset fixes the model's input shape and classes
    x, y = device_data(args, dataset)
    if tuple(x.shape[1:]) != dataset.input_shape:
        raise BadInput(f"--data-dir {args.data_dir}: samples have shape {list(x.shape[1:])}, the task's dataset "
                       f"{args.dataset} has {list(dataset.input_shape)}")
    load_model_state(model, global_arrays, args.global_uri)
    model.to(compute_device())
    loss, samples = train_local(model, x, y, epochs=args.local_epochs, batch_size=args.batch_size,
                                learning_rate=args.learning_rate, optimizer=args.optimizer, momentum=args.momentum,
                                weight_decay=args.weight_decay, proximal_mu=args.proximal_mu,
                                seed=args.seed * 100003 + args.round * 1009 + args.device_index, step=step)
    size = write_model(args.output, model_state(model),
                       metadata(args, "train", num_samples=samples, device=args.device_index))
    return {"num_samples": samples, "loss": round(loss, 6), "seconds": round(time.perf_counter() - started, 4),
            "bytes": size}
