"""Store I/O of a model through the stage code (`fedtask_worker.store`) vs the bare `minio` client, same S3 server.

Starts a moto S3 server (tests/support/s3.py), then alternates, repeat by repeat: bare minio put_object(file stream)
and fget_object (download to a file, as the stage does), and store.write_file/store.download (atomic put, retries,
streamed download to a file). Throughput = bytes / best time. Prints one JSON line.
Usage: python benchmarks/bench_store.py [--megabytes 100]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from fedtask_worker import store
    from tests.support.s3 import run_s3_server

    size = args.megabytes * 2**20
    with run_s3_server() as server, tempfile.TemporaryDirectory(prefix="bench-store-") as folder:
        os.environ.update(server.env)
        source = os.path.join(folder, "model.safetensors")
        with open(source, "wb") as stream:
            stream.write(os.urandom(size))
        client = server.client()
        client.make_bucket("bare")

        def bare_put():
            with open(source, "rb") as stream:
                client.put_object("bare", "model", stream, size, part_size=store.PART_SIZE)

        def bare_get():
            client.fget_object("bare", "model", os.path.join(folder, "bare-back"))
            assert os.path.getsize(os.path.join(folder, "bare-back")) == size

        def ours_put():
            store.write_file("s3://ours/model", source)

        def ours_get():
            assert store.download("s3://ours/model", os.path.join(folder, "back")) == size

        bare_put(), ours_put()  # warm up connections and buckets
        functions = {"bare_put": bare_put, "ours_put": ours_put, "bare_get": bare_get, "ours_get": ours_get}
        times: dict[str, list[float]] = {name: [] for name in functions}
        for _ in range(args.repeats):  # interleaved, so that a busy moment slows both sides alike
            for name, function in functions.items():
                times[name].append(best_time(function, 1))
        timings = {name: min(values) for name, values in times.items()}
    megabytes = size / 2**20
    result = {
        "benchmark": "store_io", "peer": "bare minio client put_object/fget_object", "megabytes": args.megabytes,
        **{f"{name}_mb_per_s": round(megabytes / seconds, 1) for name, seconds in timings.items()},
        "put_ratio": round(timings["bare_put"] / timings["ours_put"], 3),
        "get_ratio": round(timings["bare_get"] / timings["ours_get"], 3),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
