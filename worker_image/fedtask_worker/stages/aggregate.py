"""aggregate: validate the updates and combine them with a strategy. Imports no torch.

Updates come from devices we do not control. Each is checked before it costs anything: its size and the header
length in its first 8 bytes against bounds derived from the global model (--base), from a stat or one ranged GET,
before it is downloaded; then its header, its num_samples (capped by --max-samples/--sample-caps), its tensors and
values. With --on-invalid skip, an update that fails any check, or was never uploaded, is rejected with a reason in
the result and the round goes on with the others.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import tempfile
import time

from .. import store
from ..combine import Rejection, UpdateLimits, aggregate_files, reject_error, update_limits
from ..errors import BadInput
from ..strategies import NAMES, Options, get_strategy
from ..tensors import InvalidUpdate, check_prefix, load_arrays, read_layout, save_arrays

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
                        help="updates larger than this are rejected; with --base the bound is also the global "
                        f"model's size plus 64 KiB (default: {DEFAULT_MAX_UPDATE_BYTES})")
    parser.add_argument("--max-samples", type=positive_int, help="the most num_samples any update may claim; a "
                        "larger claim is clipped to it (default: no bound)")
    parser.add_argument("--sample-caps", type=sample_caps, action="append", default=[], metavar="DEVICE=N,...",
                        help="per-update num_samples caps, by device (the update's file name without "
                        ".safetensors); a larger claim is clipped to the cap; repeatable")
    parser.add_argument("--clip-norm", type=positive_float, help="scale every update farther than this (L2 "
                        "distance of its float tensors from --base) down to this distance (default: no clipping)")


def count(text: str, least: int = 0) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {least}")
    return int(text)


def positive_int(text: str) -> int:
    return count(text, 1)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def sample_caps(text: str) -> dict[str, int]:
    caps = {}
    for item in filter(None, text.split(",")):
        device, separator, number = item.partition("=")
        if not separator or not device:
            raise argparse.ArgumentTypeError(f"{item!r} is not DEVICE=N")
        caps[device] = count(number)
    return caps


def update_uris(args: argparse.Namespace) -> list[str]:
    if bool(args.updates) == bool(args.updates_prefix):
        raise BadInput("give either UPDATE_URI... or --updates-prefix (exactly one)")
    uris = store.list_objects(args.updates_prefix) if args.updates_prefix else list(args.updates)
    if not uris:
        raise BadInput(f"no updates under {args.updates_prefix}")
    if len(set(uris)) != len(uris):
        raise BadInput("an update URI is listed twice")
    return sorted(uris)


def fetch_update(uri: str, target: str, limits: UpdateLimits) -> str:
    """A local path holding the update: a local file as it is, an S3 object downloaded to `target`. Its size and
    header length are checked first (one ranged GET), so an update over the bounds is never downloaded; a local
    file's size is checked here and its header length by read_layout, before the header is read."""
    location = store.parse_uri(uri)
    if location.is_local:
        try:
            size = os.stat(location.key).st_size
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidUpdate(f"{uri}: not uploaded (no such file; the device finished without writing its "
                                "update)") from None
        if limits.max_bytes is not None and size > limits.max_bytes:
            raise InvalidUpdate(f"{uri}: {size} bytes is over the limit of {limits.max_bytes} bytes")
        return location.key
    try:
        size, head = store.probe(uri, 8)
    except store.NotFound:
        raise InvalidUpdate(f"{uri}: not uploaded (no such object; the device finished without writing its "
                            "update)") from None
    check_prefix(uri, size, head, limits.max_bytes, limits.max_header_bytes)
    store.download(uri, target, limits.max_bytes)
    return target


@contextlib.contextmanager
def fetch_updates(uris: list[str], limits: UpdateLimits, on_invalid: str):
    """({uri: local path}, [rejected]): S3 updates downloaded (in parallel) into a temporary folder; an update that
    is missing or over the bounds is rejected (raised with on_invalid=fail)."""
    with tempfile.TemporaryDirectory(prefix="fedtask-updates-") as folder:
        targets = {uri: os.path.join(folder, f"{index:06d}") for index, uri in enumerate(uris)}

        def fetch(uri: str):
            try:
                return fetch_update(uri, targets[uri], limits)
            except Exception as error:  # judged below, in URI order
                return error

        remote = [uri for uri in uris if not store.parse_uri(uri).is_local]
        fetched = {uri: fetch(uri) for uri in uris if store.parse_uri(uri).is_local}
        if remote:
            with concurrent.futures.ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
                fetched.update(zip(remote, pool.map(fetch, remote)))
        paths: dict[str, str] = {}
        rejected: list[Rejection] = []
        for uri in sorted(fetched):
            if isinstance(fetched[uri], BaseException):
                reject_error(rejected, uri, fetched[uri], on_invalid)
            else:
                paths[uri] = fetched[uri]
        yield paths, rejected


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
    if args.base in uris:
        raise BadInput(f"{args.base} is both --base and an update")
    options = Options(args.server_learning_rate, args.server_momentum, args.trim_fraction, args.byzantine,
                      clip_norm=args.clip_norm)
    caps = {device: cap for given in args.sample_caps for device, cap in given.items()}
    state = read_state(args.state_in) if strategy.has_state else None
    with contextlib.ExitStack() as stack:
        base_path = stack.enter_context(store.local_copy(args.base)) if args.base else None
        reference = read_layout(base_path, args.base) if base_path else None
        limits = update_limits(reference, args.max_update_bytes, max_samples=args.max_samples, sample_caps=caps,
                               expected_round=args.round if args.round > 0 else None)
        paths, rejected = stack.enter_context(fetch_updates(uris, limits, args.on_invalid))
        outcome = aggregate_files(paths, args.strategy, (args.base, base_path) if args.base else None, state,
                                  options, args.on_invalid, limits, rejected)
    meta = {"task": args.task or "", "round": str(args.round), "stage": "aggregate", "strategy": args.strategy,
            "updates": str(len(outcome.accepted)), "num_samples": str(outcome.num_samples)}
    with store.writer(args.output) as path:
        size = save_arrays(path, outcome.arrays, meta)
    if strategy.has_state and args.state_out:
        with store.writer(args.state_out) as path:
            save_arrays(path, outcome.state, dict(meta, stage="server-state"))
    return {"updates": len(outcome.accepted), "num_samples": outcome.num_samples,
            "rejected": [{"uri": item.uri, "reason": item.reason} for item in outcome.rejected],
            "samples_capped": len(outcome.capped), "norm_clipped": len(outcome.clipped),
            "seconds": round(time.perf_counter() - started, 4), "bytes": size}
