"""Issue 12's figures: hostile updates by kind in real `fedtask run` tasks, cross-tenant attempts against the real
MinIO, and the aggregate stage's peak memory.

- `rounds`: one `fedtask run` of one honest peer task and one task per hostile kind (digits, 4 devices all in every
  round, `--rounds` rounds, `onInvalid: skip`). In each hostile task device d000 uploads that kind every round
  through the bring-your-own-code plug point (`spec.training.step: tests.support.hostile_device:step`, a test-only
  module; no product flag). Per kind: rounds completed, the task's phase, the rounds in which d000 was rejected
  (status `history[].rejected`), the reasons of the `UpdateRejected` events, the aggregate pods' `samples_capped` /
  `norm_clipped`, and any other device rejected (must be none). Final accuracy is reported as a ratio to the honest
  peer of the same run.
- `cross_tenant`: against a real `minio server` (tests/support/minio_server.py): a train pod's presigned URLs of
  namespace team-a (kube/presign.Presigner, as the operator signs them) turned at other keys, and team-a's
  per-namespace MinIO user (kube/credentials) at team-b's keys, the bucket, another bucket and the admin API. Every
  attempt is counted as refused or allowed; the pod's own reads and writes are the control (must be allowed).
- `aggregate_memory`: benchmarks/bench_hostile_aggregate.py's runs (peak RSS of the aggregate process with a 100 MB
  hostile header and with --count valid updates), unless --skip-memory.

Prints one JSON line; --output also writes it to a file. Usage:
  python benchmarks/bench_hostile.py [--rounds 2] [--kinds a,b] [--skip-store] [--skip-memory] [--output FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tests.support.hostile_device import KINDS  # noqa: E402

HOSTILE_DEVICE = "d000"
CLIP_NORM = 50.0  # above every honest update's distance in this task (norm_clipped counts only the hostile one)


def task_manifest(name: str, rounds: int, kind: str | None) -> dict:
    manifest = yaml.safe_load((ROOT / "examples" / "digits-quick.yaml").read_text())
    manifest["metadata"]["name"] = name
    spec = manifest["spec"]
    spec["rounds"]["max"] = rounds
    spec["devices"].update({"count": 4, "perRound": 4})
    spec["training"]["step"] = "tests.support.hostile_device:step"
    spec["aggregation"] = {"onInvalid": "skip"}
    if kind is not None:
        spec["podTemplate"] = {"env": [{"name": "HOSTILE_KIND", "value": kind},
                                       {"name": "HOSTILE_DEVICE", "value": str(int(HOSTILE_DEVICE[1:]))}]}
        if KINDS[kind] == "clipped":
            spec["aggregation"]["clipNorm"] = CLIP_NORM
    return manifest


def task_name(kind: str) -> str:
    return "h-" + kind.replace("_", "-")


def aggregate_results(workdir: Path, name: str) -> dict[int, dict]:
    """Round -> the aggregate pod's result (its termination message), from the local runtime's pod folders."""
    results = {}
    for folder in sorted((workdir / "pods" / "default").glob(f"{name}-r*-aggregate*")):
        match = re.match(rf"{re.escape(name)}-r(\d+)-aggregate", folder.name)
        log = folder / "termination-log"
        if match and log.exists() and log.read_text().strip():
            results[int(match.group(1))] = json.loads(log.read_text())
    return results


def rejected_reasons(workdir: Path, name: str) -> list[str]:
    events = workdir / name / "events.jsonl"
    reasons = []
    for line in events.read_text().splitlines() if events.exists() else []:
        event = json.loads(line)
        if event.get("reason") == "UpdateRejected":
            reasons.append(event["message"].split(" rejected: ", 1)[-1])
    return reasons


def outcome(workdir: Path, task: dict, kind: str | None, rounds: int) -> dict:
    name = task["metadata"]["name"]
    status = task.get("status") or {}
    history = status.get("history") or []
    aggregates = aggregate_results(workdir, name)
    rejected_rounds = [entry["round"] for entry in history if HOSTILE_DEVICE in (entry.get("rejected") or [])]
    others = sorted({device for entry in history for device in entry.get("rejected") or []} - {HOSTILE_DEVICE})
    capped = sum(result.get("samples_capped", 0) for result in aggregates.values())
    clipped = sum(result.get("norm_clipped", 0) for result in aggregates.values())
    completed = len(history)
    result = {"phase": status.get("phase"), "rounds_completed": completed, "accuracy": status.get("accuracy"),
              "d000_rejected_rounds": len(rejected_rounds), "other_devices_rejected": others,
              "samples_capped": capped, "norm_clipped": clipped}
    if kind is None:
        result["ok"] = status.get("phase") == "Succeeded" and completed == rounds and not others \
            and not rejected_rounds and capped == 0 and clipped == 0
        return result
    expected = KINDS[kind]
    neutralised = {"rejected": len(rejected_rounds), "capped": capped, "clipped": clipped}[expected]
    reasons = rejected_reasons(workdir, name)
    result.update({"expected": expected, "injected": rounds, "neutralised": neutralised,
                   "reason": reasons[0] if reasons else None})
    result["ok"] = (status.get("phase") == "Succeeded" and completed == rounds and not others
                    and neutralised == rounds and (expected != "rejected" or len(reasons) == rounds))
    return result


def run_hostile_tasks(kinds: list[str], rounds: int, folder: Path, timeout: float = 900) -> dict:
    """One `fedtask run` of the honest peer and one task per kind; per-kind outcomes."""
    manifests = []
    for name, kind in [("honest", None)] + [(task_name(kind), kind) for kind in kinds]:
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(task_manifest(name, rounds, kind)))
        manifests.append(str(path))
    workdir = folder / "runs"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "fedtask_operator.cli", "run", *manifests, "--workdir",
                              str(workdir), "-o", "json"], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                             env=env)
    seconds = time.perf_counter() - started
    try:
        tasks = {task["metadata"]["name"]: task for task in json.loads(process.stdout)["items"]}
    except (ValueError, KeyError) as error:
        raise RuntimeError(f"fedtask run (exit {process.returncode}) gave no task list ({error}): "
                           f"{process.stderr[-2000:]}") from None
    peer = outcome(workdir, tasks["honest"], None, rounds)
    by_kind = {}
    for kind in kinds:
        result = outcome(workdir, tasks[task_name(kind)], kind, rounds)
        if peer.get("accuracy") and result.get("accuracy") is not None:
            result["accuracy_vs_honest"] = round(result["accuracy"] / peer["accuracy"], 3)
        by_kind[kind] = result
    return {"exit_code": process.returncode, "seconds": round(seconds, 1), "honest": peer, "kinds": by_kind}


# ---------------------------------------------------------------------------------------------------------------
# cross-tenant attempts against the real MinIO


def _status_of(method: str, url: str, body: bytes | None = None) -> int:
    import urllib3

    return urllib3.request(method, url, body=body, retries=False).status


def presigned_attempts(server) -> dict:
    """A team-a train pod's URLs, turned at what its stage must not touch."""
    from fedtask_operator.core.pods import RuntimeConfig, build_train_pod
    from fedtask_operator.core.scheduling.types import DeviceSlot
    from fedtask_operator.core.spec import parse_task
    from fedtask_operator.kube import presign

    bucket, base = "fedtask", "s3://fedtask/tasks/team-a/mnist/uid-1"
    client = server.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    own_model = "tasks/team-a/mnist/uid-1/round-0001/global.safetensors"
    theirs = "tasks/team-b/other/uid-9/round-0001/global.safetensors"
    for key, data in [(own_model, b"global-1"), (theirs, b"theirs")]:
        client.put_object(bucket, key, io.BytesIO(data), len(data))
    config = RuntimeConfig(store_base_uri="s3://fedtask/tasks", s3_endpoint=server.endpoint, s3_region=server.region,
                           presigned_urls=True)
    task = parse_task({"apiVersion": "fedtask.io/v1alpha1", "kind": "FederatedTask",
                       "metadata": {"name": "mnist", "namespace": "team-a", "uid": "uid-1"},
                       "spec": {"devices": {"count": 4, "perRound": 2}, "rounds": {"timeoutSeconds": 600}}})

    def signed(clock=time.time) -> dict:
        signer = presign.Presigner(server.endpoint, server.access_key, server.secret_key, False, server.region,
                                   clock=clock)
        pod = signer.attach(build_train_pod(task, config, 2, DeviceSlot("d000", "node-1")), task, base, "unused")
        env = {item["name"]: item.get("value") for item in pod["spec"]["containers"][0]["env"]}
        return json.loads(env[presign.ACCESS_ENV])["objects"]

    objects = signed()
    put = objects[f"{base}/round-0002/updates/d000.safetensors"]["PUT"]
    get = objects[f"{base}/round-0001/global.safetensors"]["GET"]
    own_key = f"{bucket}/tasks/team-a/mnist/uid-1/round-0002/updates/d000.safetensors"
    model_key = f"{bucket}/{own_model}"

    def other(url: str, key: str, replacement: str) -> str:
        return url.replace(f"/{key}?", f"/{replacement}?")

    control = {"read its round's global model": _status_of("GET", get) == 200,
               "write its own update": _status_of("PUT", put, b"my update") == 200}
    expired = signed(clock=lambda: time.time() - 2 * 600 - 600 - 5)
    attempts = {
        "PUT another device's update": ("PUT", other(put, own_key, own_key.replace("d000", "d001"))),
        "PUT the next global model": ("PUT", other(put, own_key, model_key.replace("0001", "0002"))),
        "PUT over the global model it reads": ("PUT", get),
        "GET another namespace's model": ("GET", other(get, model_key, f"{bucket}/{theirs}")),
        "PUT another namespace's model": ("PUT", other(put, own_key, f"{bucket}/{theirs}")),
        "GET its own update back": ("GET", put),
        "list the bucket": ("GET", get.replace(f"/{model_key}?", f"/{bucket}?list-type=2&")),
        "GET with an expired URL": ("GET", expired[f"{base}/round-0001/global.safetensors"]["GET"]),
    }
    refused = {what: _status_of(method, url, b"poisoned" if method == "PUT" else None) == 403
               for what, (method, url) in attempts.items()}
    data = client.get_object(bucket, theirs)
    intact = data.read() == b"theirs"
    data.close()
    data.release_conn()
    return {"control_allowed": control, "refused": refused, "other_namespace_object_intact": intact}


def namespace_user_attempts(server) -> dict:
    """team-a's per-namespace MinIO user (as the operator issues it) at everything outside its prefix."""
    import minio
    from minio.credentials import StaticProvider
    from minio.deleteobjects import DeleteObject
    from minio.error import S3Error

    from fedtask_operator.kube import credentials

    bucket, prefix = "fedtask", "tasks"

    def issue(namespace: str):
        secret = credentials.new_secret_key()
        access = credentials.ensure_store_user(server.endpoint, server.access_key, server.secret_key, False,
                                               server.region, bucket, prefix, namespace, secret)
        return access, secret, minio.Minio(server.endpoint, access_key=access, secret_key=secret, secure=False,
                                           region=server.region)

    access, secret, a = issue("team-a")
    _, _, b = issue("team-b")
    root = server.client()
    for name in ("other",):
        if not root.bucket_exists(name):
            root.make_bucket(name)
    own, theirs = f"{prefix}/team-a/t/u/global", f"{prefix}/team-b/t/u/global"

    def put(client, target_bucket: str, key: str) -> None:
        client.put_object(target_bucket, key, io.BytesIO(b"x"), 1)

    def allowed(action) -> bool:
        try:
            result = action()
            if result is not None and hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
                list(result)
            return True
        except S3Error:
            return False

    put(b, bucket, theirs)
    control = {"write its own prefix": allowed(lambda: put(a, bucket, own)),
               "read its own prefix": allowed(lambda: a.stat_object(bucket, own))}
    admin = minio.MinioAdmin(endpoint=server.endpoint, credentials=StaticProvider(access, secret), secure=False)

    def admin_refused(action) -> bool:
        try:
            action()
        except Exception as error:  # the admin client raises its own error types
            return bool(re.search("(?i)access ?denied", str(error)))
        return False

    def delete_theirs():
        errors = list(a.remove_objects(bucket, [DeleteObject(theirs)]))
        if errors:
            raise S3Error(errors[0].code, errors[0].message, theirs, "", "", None)

    attempts = {
        "GET another namespace's object": lambda: a.get_object(bucket, theirs).read(),
        "HEAD another namespace's object": lambda: a.stat_object(bucket, theirs),
        "PUT over another namespace's object": lambda: put(a, bucket, theirs),
        "PUT a new key in another namespace": lambda: put(a, bucket, f"{prefix}/team-b/t/u/round-0002/global"),
        "PUT outside the prefix": lambda: put(a, bucket, "elsewhere/key"),
        "DELETE another namespace's object": delete_theirs,
        "list another namespace": lambda: a.list_objects(bucket, prefix=f"{prefix}/team-b/", recursive=True),
        "list every namespace": lambda: a.list_objects(bucket, prefix=f"{prefix}/", recursive=True),
        "list the bucket": lambda: a.list_objects(bucket, recursive=True),
        "PUT in another bucket": lambda: put(a, "other", f"{prefix}/team-a/x"),
        "create a bucket": lambda: a.make_bucket("mine"),
    }
    refused = {what: not allowed(action) for what, action in attempts.items()}
    refused.update({
        "admin: add a user": admin_refused(lambda: admin.user_add("fedtask-ns-victim", "a-secret-key-of-mine")),
        "admin: widen a policy": admin_refused(lambda: admin.policy_add(
            "fedtask-ns-team-a", policy=credentials.namespace_policy(bucket, "", "*"))),
        "admin: attach consoleAdmin": admin_refused(lambda: admin.policy_set("consoleAdmin", user=access)),
    })
    response = b.get_object(bucket, theirs)
    intact = response.read() == b"x"
    response.close()
    response.release_conn()
    return {"control_allowed": control, "refused": refused, "other_namespace_object_intact": intact}


def cross_tenant(folder: Path) -> dict:
    from tests.support.minio_server import run_minio_server

    with run_minio_server(folder / "minio" / "data") as server:
        results = {"presigned_urls": presigned_attempts(server),
                   "namespace_credentials": namespace_user_attempts(server)}
    for result in results.values():
        result["attempted"] = len(result["refused"])
        result["refused_count"] = sum(result["refused"].values())
        result["ok"] = (result["refused_count"] == result["attempted"] and all(result["control_allowed"].values())
                        and result["other_namespace_object_intact"])
    return results


def aggregate_memory(count: int, header_mb: int) -> dict:
    import bench_hostile_aggregate

    with contextlib.redirect_stdout(io.StringIO()):
        return bench_hostile_aggregate.main(["--count", str(count), "--header-mb", str(header_mb)])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated (default: every kind)")
    parser.add_argument("--skip-store", action="store_true", help="no cross-tenant attempts (no MinIO)")
    parser.add_argument("--skip-memory", action="store_true", help="no aggregate peak-memory runs")
    parser.add_argument("--count", type=int, default=1000, help="valid updates of the memory run")
    parser.add_argument("--header-mb", type=int, default=100, help="hostile header of the memory run")
    parser.add_argument("--output", help="also write the JSON line to this file")
    args = parser.parse_args(argv)
    kinds = [kind for kind in args.kinds.split(",") if kind]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        parser.error(f"--kinds: unknown {', '.join(unknown)}; known: {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory(prefix="bench-hostile-run-") as temporary:
        folder = Path(temporary)
        result: dict = {"benchmark": "hostile", "rounds": args.rounds}
        result["run"] = run_hostile_tasks(kinds, args.rounds, folder)
        by_kind = result["run"]["kinds"]
        result["kinds_injected"] = len(by_kind)
        result["kinds_neutralised_round_completed"] = sum(item["ok"] for item in by_kind.values())
        if not args.skip_store:
            result["cross_tenant"] = cross_tenant(folder)
        if not args.skip_memory:
            result["aggregate_memory"] = aggregate_memory(args.count, args.header_mb)
    line = json.dumps(result)
    print(line, flush=True)
    if args.output:
        Path(args.output).write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
