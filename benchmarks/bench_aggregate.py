"""In-process aggregation speed and peak memory: fedtask's blocked reduction vs Flower's
`flwr.server.strategy.aggregate.aggregate`, and vs the memory-bandwidth floor, on the same float32 updates.

The floor is bytes read / the read bandwidth of a 2-thread `torch.sum` over a 1 GB float32 array, timed here in
turns with fedtask's runs (the best of each): this machine's bandwidth drifts by tens of percent within a minute.
Peak memory is the peak of the allocations each aggregation makes (tracemalloc sees numpy's allocations), in
units of one model. Every update has memory of its own, so no peer reads an update from the CPU cache because an
earlier one held the same bytes (the values repeat over a pool of random arrays, which only saves generating them).

Prints one JSON line. Usage: python benchmarks/bench_aggregate.py [--params 10000000] [--counts 10,100]
"""
from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc

import numpy as np


def make_updates(params: int, count: int, pool: int, layers: int = 4) -> tuple[list[list[np.ndarray]], list[int]]:
    rng = np.random.default_rng(0)
    sizes = [params // layers] * (layers - 1) + [params - (params // layers) * (layers - 1)]
    distinct = [[rng.standard_normal(size, dtype=np.float32) for size in sizes] for _ in range(min(pool, count))]
    updates = [[layer.copy() for layer in distinct[index % len(distinct)]] for index in range(count)]
    samples = [int(n) for n in rng.integers(50, 500, count)]
    return updates, samples


def ours(updates, samples, threads):
    from fedtask_worker.combine import aggregate_states
    from fedtask_worker.strategies import Options

    states = [{f"layer{i}": layer for i, layer in enumerate(update)} for update in updates]
    out, _ = aggregate_states(states, samples, "fedavg", options=Options(threads=threads))
    return [out[f"layer{i}"] for i in range(len(updates[0]))]


def flower(updates, samples):
    from flwr.server.strategy.aggregate import aggregate

    return aggregate(list(zip(updates, samples)))


def best_times(functions, repeats: int) -> list[float]:
    """Best time of each function, taken in turns so that all of them see the same machine."""
    times: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        gc.collect()
        for function, record in zip(functions, times):
            started = time.perf_counter()
            function()
            record.append(time.perf_counter() - started)
    return [min(record) for record in times]


def peak_bytes(function) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def floor_sum(floor_bytes: int, threads: int):
    """A function that sums a float32 array of floor_bytes on `threads` torch threads: the read-bandwidth floor."""
    import torch

    array = torch.ones(floor_bytes // 4, dtype=torch.float32)

    def run() -> None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)  # about 1 us, against 15 ms or more for the sum
        try:
            array.sum()
        finally:
            torch.set_num_threads(previous)

    run()
    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--counts", default="10,100")
    parser.add_argument("--pool", type=int, default=20,
                        help="distinct random update values (copies of them fill the rest)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--floor-bytes", type=int, default=1 << 30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    floor = floor_sum(args.floor_bytes, args.threads)
    result: dict = {"benchmark": "aggregate_in_process", "peer": "flwr.server.strategy.aggregate.aggregate",
                    "params": args.params, "threads": args.threads, "runs": {}}
    model_bytes = args.params * 4
    for count in (int(c) for c in args.counts.split(",")):
        updates, samples = make_updates(args.params, count, args.pool)
        mine, theirs = ours(updates, samples, args.threads), flower(updates, samples)
        error = max(float(np.max(np.abs(a - b))) for a, b in zip(mine, theirs))
        del mine, theirs
        floor_sum_seconds, ours_seconds = best_times([floor, lambda: ours(updates, samples, args.threads)],
                                                     max(args.repeats, 5))
        bandwidth = args.floor_bytes / floor_sum_seconds
        [flower_seconds] = best_times([lambda: flower(updates, samples)], max(1, args.repeats - 1))
        ours_peak = peak_bytes(lambda: ours(updates, samples, args.threads))
        flower_peak = peak_bytes(lambda: flower(updates, samples))
        floor_seconds = count * model_bytes / bandwidth
        result["runs"][str(count)] = {
            "ours_seconds": round(ours_seconds, 4), "flower_seconds": round(flower_seconds, 4),
            "floor_seconds": round(floor_seconds, 4), "floor_read_gb_per_s": round(bandwidth / 1e9, 2),
            "speedup_vs_flower": round(flower_seconds / ours_seconds, 2),
            "ours_vs_floor": round(ours_seconds / floor_seconds, 2),
            "ours_peak_models": round(ours_peak / model_bytes, 2),
            "flower_peak_models": round(flower_peak / model_bytes, 2),
            "max_abs_difference": error,
        }
        updates.clear()  # free this count's inputs before the next is built
        gc.collect()
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
