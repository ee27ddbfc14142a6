"""aggregate: validate the updates and combine them with a strategy. Imports no torch."""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import tempfile
import time

from .. import store
from ..combine import aggregate_files
from ..errors import BadInput
from ..strategies import NAMES, Options, get_strategy
from ..tensors import load_arrays, save_arrays

DEFAULT_MAX_UPDATE_BYTES = 4 * 1024 ** 3
DOWNLOAD_THREADS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("updates", nargs="*", metavar="UPDATE_URI", help="the updates to combine")
    parser.add_argument("--updates-prefix", help="combine every object under this URI prefix instead")
    parser.add_argument("--output", required=True, help="URI to write the aggregated model to")
    parser.add_argument("--strategy", choices=NAMES, default="fedavg",
                        help="fedavg (sample-weighted mean), fedavgm / fedadam (server optimizers over base - mean; "
                        "need --base), median, trimmed-mean, krum (default: fedavg)")
    parser.add_argument("--base", help="the previous global model: the reference layout every update must match "
                        "(else the layout most updates share)")
    parser.add_argument("--on-invalid", choices=("skip", "fail"), default="fail",
                        help="skip: leave bad updates out and report them in 'rejected'; fail: exit 2 on the first "
                        "(default: fail)")
    parser.add_argument("--state-in", help="server optimizer state of the previous round (missing = fresh state)")
    parser.add_argument("--state-out", help="where to write the server optimizer state after this round")
    parser.add_argument("--server-learning-rate", type=float, help="server step size (fedavgm 1.0, fedadam 0.1)")
    parser.add_argument("--server-momentum", type=float, help="fedavgm momentum / fedadam beta1 (default 0.9)")
    parser.add_argument("--trim-fraction", type=float, default=0.1,
                        help="trimmed-mean: fraction cut at each end (default: 0.1)")
    parser.add_argument("--byzantine", type=int, default=0, help="krum: number of faulty updates tolerated "
                        "(default: 0)")
    parser.add_argument("--max-update-bytes", type=int, default=DEFAULT_MAX_UPDATE_BYTES,
                        help=f"updates larger than this are rejected (default: {DEFAULT_MAX_UPDATE_BYTES})")


def update_uris(args: argparse.Namespace) -> list[str]:
    if bool(args.updates) == bool(args.updates_prefix):
        raise BadInput("give either UPDATE_URI... or --updates-prefix (exactly one)")
    uris = store.list_objects(args.updates_prefix) if args.updates_prefix else list(args.updates)
    if not uris:
        raise BadInput(f"no updates under {args.updates_prefix}")
    if len(set(uris)) != len(uris):
        raise BadInput("an update URI is listed twice")
    return sorted(uris)


@contextlib.contextmanager
def local_paths(uris: list[str]):
    """{uri: local path}: local files as they are, S3 objects downloaded (in parallel) into a temporary folder."""
    remote = [uri for uri in uris if not store.parse_uri(uri).is_local]
    paths = {uri: store.parse_uri(uri).key for uri in uris if uri not in remote}
    for uri, path in paths.items():
        if not os.path.isfile(path):
            raise BadInput(f"{uri}: no such file")
    if not remote:
        yield paths
        return
    with tempfile.TemporaryDirectory(prefix="fedtask-updates-") as folder:
        targets = {uri: os.path.join(folder, f"{index:06d}") for index, uri in enumerate(remote)}
        with concurrent.futures.ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(lambda uri: store.download(uri, targets[uri]), remote))
        paths.update(targets)
        yield paths


def read_state(uri: str | None):
    if not uri or not store.exists(uri):
        return None
    with store.local_copy(uri) as path:
        arrays, _ = load_arrays(path, uri)
    return arrays


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    strategy = get_strategy(args.strategy)
    uris = update_uris(args)
    options = Options(args.server_learning_rate, args.server_momentum, args.trim_fraction, args.byzantine)
    state = read_state(args.state_in) if strategy.has_state else None
    with local_paths(uris + ([args.base] if args.base else [])) as paths:
        base = (args.base, paths.pop(args.base)) if args.base else None
        outcome = aggregate_files(paths, args.strategy, base, state, options, args.on_invalid,
                                  args.max_update_bytes, args.round if args.round > 0 else None)
    meta = {"task": args.task or "", "round": str(args.round), "stage": "aggregate", "strategy": args.strategy,
            "updates": str(len(outcome.accepted)), "num_samples": str(outcome.num_samples)}
    with store.writer(args.output) as path:
        size = save_arrays(path, outcome.arrays, meta)
    if strategy.has_state and args.state_out:
        with store.writer(args.state_out) as path:
            save_arrays(path, outcome.state, dict(meta, stage="server-state"))
    return {"updates": len(outcome.accepted), "num_samples": outcome.num_samples,
            "rejected": [{"uri": item.uri, "reason": item.reason} for item in outcome.rejected],
            "seconds": round(time.perf_counter() - started, 4), "bytes": size}
