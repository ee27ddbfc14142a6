"""Fault injection for `fedtask run` (the local runtime) or the operator: kill it at random points of a 10-round task,
resume it, and check what the task's stored record says. Prints one JSON line.

For each seed, a fresh workdir; the run is killed 1 or 2 times (SIGKILL to its process group, like `kill -9` of a
terminal's job, or SIGINT, like Ctrl-C) at a random time within the uninterrupted run's wall time, then started again
with the same command until it exits. Checked per seed:
- the run completes (phase Succeeded) within a bounded number of restarts;
- every round is in status.history exactly once (rounds lost, rounds duplicated);
- the status never goes back: the history seen at each kill is a prefix of the final one, and the round never drops;
- the final global model (DIR/<task>/model.safetensors) is bit-identical to the uninterrupted run's, when two
  uninterrupted runs are themselves bit-identical (training deterministic; else the check is reported as not
  applicable).
The peer is the uninterrupted run in the same process: the time ratio is faulted total / uninterrupted.

`--target operator`: the same for `fedtask operator` (the real kopf process, `--standalone`) against the API emulator
(kmock, tests/support/kube.py) whose pods the test kubelet runs (tests/support/kubelet.py). Each seed gets a fresh
emulated cluster with one task (digits MLP, 4 devices, 2 per round, podRetryLimit 1); the operator is SIGKILLed 1-3
times at random points within the uninterrupted run's wall time and started again after 0-2 s, and (unless
`--no-pod-faults`) the first train pod of one random round exits 1 (a crash) and that of another exits 137 with reason
OOMKilled. Checked per seed, from every version the API server stored: the task Succeeds; every round is in the
history once; no pod name was created twice (two uids) or started twice; no retry beyond the injected failures; no pod
of the task left pending or running, or owned by no live task, once it is done (orphaned); round, history and phase
never go back; the final model (status.model.uri in the store) is bit-identical to the uninterrupted run's.

`--target operator --api real`: the same on the real control plane (hack/local-cluster.sh: etcd, kube-apiserver,
kube-scheduler, kube-controller-manager, the chart's MinIO, node agents running pods as processes), one cluster for
the peers and all seeds, one task at a time in namespace fedtask (deleted, pods gone, before the next). The operator
is a host process with the chart Deployment's arguments (the Deployment scaled to zero), SIGKILLed and restarted on
the same schedule; the train-pod faults are signals to the pod's process on its node (crash: SIGSEGV, exit 139; OOM:
SIGKILL, exit 137 with reason Error, as the node agent cannot report OOMKilled); the checks read what watches of the
task and its pods saw and the node agents' Started events.

`--target operator --replicas 2` (either API): two operator replicas with the Lease (`--leader-election`, 6 s) start
together, and each seed faults the current leader (the Lease's holder) twice, in random order at random points: a
SIGKILL (started again after 0-2 s), and a SIGSTOP for 1.5-2.5 lease durations then SIGCONT (the stale replica resumes
and must not act). The same checks, plus per fault kind the failover time: from the fault to the Lease held by
another identity (the other replica, or the killed one started again).

    python benchmarks/faults.py [--target run|operator] [--api kmock|real] [--replicas 1|2] [--seeds 20] [--rounds 10]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the API emulator and test kubelet (`--target operator`)
MANIFEST = ROOT / "examples" / "digits-quick.yaml"
TASK = "digits-quick"
# Devices drawn per round from the task and round alone (time-fair follows measured train times, which differ from run
# to run): the same devices train in every run, so the final model can be compared bit for bit.
POLICY = "random"
MAX_STARTS = 8  # restarts of one seed before it counts as not completed
STARTED = time.monotonic()  # the benchmark's start (--time-budget)


def command(workdir: Path, rounds: int) -> list[str]:
    return [sys.executable, "-m", "fedtask_operator.cli", "run", str(MANIFEST), "--workdir", str(workdir),
            "--set", f"spec.rounds.max={rounds}", "--set", f"spec.scheduling.policy={POLICY}"]


def record(workdir: Path) -> dict:
    try:
        return json.loads((workdir / TASK / "federatedtask.json").read_text())
    except (OSError, ValueError):
        return {}


def model_hash(workdir: Path) -> str | None:
    path = workdir / TASK / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def start(workdir: Path, rounds: int, log) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(command(workdir, rounds), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def uninterrupted(workdir: Path, rounds: int) -> tuple[float, str | None, dict]:
    started = time.monotonic()
    with open(workdir.parent / f"{workdir.name}.log", "wb") as log:
        code = start(workdir, rounds, log).wait()
    if code != 0:
        raise SystemExit(f"faults.py: the uninterrupted run failed ({code}); see {workdir.parent}")
    return time.monotonic() - started, model_hash(workdir), record(workdir)


def kill_group(process: subprocess.Popen, kind: str) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL if kind == "sigkill" else signal.SIGINT)
    except ProcessLookupError:
        pass


def rounds_of(task: dict) -> list[int]:
    return [entry.get("round") for entry in (task.get("status") or {}).get("history") or []]


def faulted_seed(seed: int, workdir: Path, rounds: int, window: float) -> dict:
    rng = random.Random(seed)
    kills = [(rng.uniform(0.3, window), "sigkill" if rng.random() < 0.75 else "sigint")
             for _ in range(rng.choice((1, 2)))]
    result = {"seed": seed, "injected": {"sigkill": 0, "sigint": 0}, "missed": 0, "starts": 0,
              "regressions": [], "exit_codes": []}
    seen: list[list[int]] = []
    rounds_seen: list[int] = []
    started = time.monotonic()
    with open(workdir.parent / f"{workdir.name}.log", "wb") as log:
        while result["starts"] < MAX_STARTS:
            result["starts"] += 1
            process = start(workdir, rounds, log)
            if kills:
                at, kind = kills.pop(0)
                try:
                    process.wait(timeout=at)
                    result["missed"] += 1  # it ended before the kill time
                except subprocess.TimeoutExpired:
                    kill_group(process, kind)
                    result["injected"][kind] += 1
            code = process.wait()
            result["exit_codes"].append(code)
            task = record(workdir)
            seen.append(rounds_of(task))
            rounds_seen.append((task.get("status") or {}).get("round") or 0)
            if code == 0 and not kills:
                break
    result["seconds"] = time.monotonic() - started
    final = record(workdir)
    history = rounds_of(final)
    result["phase"] = (final.get("status") or {}).get("phase")
    result["history"] = history
    result["lost"] = sorted(set(range(1, rounds + 1)) - set(history))
    result["duplicated"] = sorted({r for r in history if history.count(r) > 1})
    for snapshot in seen:
        if history[:len(snapshot)] != snapshot:
            result["regressions"].append(snapshot)
    if rounds_seen != sorted(rounds_seen):
        result["regressions"].append({"rounds": rounds_seen})
    result["model"] = model_hash(workdir)
    return result


# --- `--target operator`: the operator process killed, against the emulated API -------------------------------------
OPERATOR_TASK = "faults"
POD_FAULTS = {"train_pod_crash": (1, "Error"), "train_pod_oom": (137, "OOMKilled")}  # kind -> exit code, reason
FINISHED_POD_PHASES = ("Succeeded", "Failed")
LEASE_SECONDS = 6  # --leader-election: the lease the operator holds (the chart's default is 15 s)
LEASES = "coordination.k8s.io/v1/leases"


OPERATOR_FAULTS = ("operator_sigkill", "operator_sigstop")  # the operator faults of a plan (its kinds)


class Replicas:
    """The operator processes of one run, started together: `count` replicas, each an `OperatorProcess`-like object
    from `make(name)` (start, kill, stop, log, `process`, `env`). Each start gets its own POD_NAME
    (`<name>-<start>`), so the Lease's holderIdentity (`<POD_NAME>_<random>`) names the replica and the start that
    holds it. `holder()` reads the Lease's holderIdentity ("" when none), or is None (`--standalone`).

    `inject(kind, param, result)` is one operator fault:
    - `operator_sigkill`: SIGKILL, and the same replica started again `param` seconds later;
    - `operator_sigstop`: SIGSTOP for `param` seconds (longer than the lease), then SIGCONT: the stale replica resumes.
    With more than one replica the fault goes to the current leader (the replica whose running process holds the
    Lease; waited for, as the previous fault's failover may still be under way). With a Lease, the failover time is
    measured: from the fault to the Lease held by another identity (another replica, or the killed one started
    again), polled every 50 ms."""

    def __init__(self, make, count: int = 1, holder=None):
        self.processes = {f"replica-{i}": make(f"replica-{i}") for i in range(1, count + 1)}
        self.holder = holder
        self.starts = dict.fromkeys(self.processes, 0)
        self.failovers: list[list] = []  # [kind, seconds from the fault to another holder, or None]
        self.paused: list[tuple[str, str]] = []  # (replica, the Lease identity it held when paused)
        self.timeline: list[dict] = []  # each fault: kind, replica, monotonic times of the fault, resume, failover

    def start(self, name: str | None = None) -> None:
        for replica in [name] if name else self.processes:
            self.starts[replica] += 1
            self.processes[replica].env["POD_NAME"] = f"{replica}-{self.starts[replica]}"
            self.processes[replica].start()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.process is not None and process.process.poll() is None:
                process.process.send_signal(signal.SIGCONT)  # a paused one cannot act on SIGTERM
            process.stop()

    def exited(self) -> str | None:
        """A message when a replica's process ended by itself (not by a fault of ours), else None."""
        for name, process in self.processes.items():
            if process.process is not None and process.process.poll() is not None:
                return f"operator {name} exited ({process.process.returncode}): {process.log()[-1500:]}"
        return None

    def leader(self) -> str | None:
        """The replica whose running process holds the Lease, or None."""
        holder = self.holder() if self.holder else ""
        pod = holder.rsplit("_", 1)[0]
        for name, process in self.processes.items():
            if pod == f"{name}-{self.starts[name]}" and process.process is not None and process.process.poll() is None:
                return name
        return None

    def inject(self, kind: str, param: float, result: dict) -> None:
        from tests.support.waiting import wait_for

        if len(self.processes) > 1:
            try:
                name = wait_for(self.leader, timeout=120, interval=0.05, message="a leader to fault")
            except AssertionError as error:
                result["failures"].append(str(error))
                return
        else:
            name = next(iter(self.processes))
        process = self.processes[name]
        identity = self.holder() if self.holder else ""
        at = time.monotonic()
        if kind == "operator_sigstop":
            os.kill(process.process.pid, signal.SIGSTOP)
            self.paused.append((name, identity))
        else:
            process.kill()
        result["injected"][kind] += 1
        resumed, failover = False, None
        while True:
            now = time.monotonic()
            if not resumed and now - at >= param:
                if kind == "operator_sigstop":
                    os.kill(process.process.pid, signal.SIGCONT)
                else:
                    self.start(name)
                resumed = True
            if failover is None and self.holder is not None:
                current = self.holder()
                if current and current != identity:
                    failover = now - at
            if resumed and (failover is not None or self.holder is None or now - at > param + 4 * LEASE_SECONDS):
                break
            time.sleep(0.05)
        self.timeline.append({"kind": kind, "replica": name, "at": at, "resumed": at + param,
                              "failover": None if failover is None else at + failover})
        if self.holder is not None:
            self.failovers.append([kind, None if failover is None else round(failover, 2)])
            if failover is None:
                result["failures"].append(f"{kind} of {name} ({identity}): no other holder of the Lease within "
                                          f"{param + 4 * LEASE_SECONDS:.0f} s")

    def paused_then_stood_down(self) -> list[bool | None]:
        """For each paused leader: whether its log says it lost the Lease (it noticed on resuming and stood down);
        None when it was paused before it had announced (logged) acquiring it, so it has nothing to stand down from."""
        found = []
        for name, identity in self.paused:
            log = self.processes[name].log()
            found.append(f"lost by {identity}" in log if f"acquired by {identity}" in log else None)
        return found


def operator_run(workdir: Path, rounds: int, s3, launcher, kills=(), pod_faults=(), timeout: float = 900,
                 tree: str = "", lease: bool = False, replicas: int = 1) -> dict:
    """One task of `rounds` rounds in a fresh emulated cluster, `fedtask operator --standalone` (or `replicas`
    replicas with the lease) faulted at each of `kills` ((seconds after the first start, param, kind) triples: see
    `Replicas.inject`); `pod_faults` ((kind, round) pairs) make the first train pod of that round fail as `kind`
    says. What the API server stored is then checked."""
    from tests.support.kube import FEDERATEDTASKS, PODS, EmulatedCluster, make_node
    from tests.support.kubelet import ApiKubelet
    from tests.support.operator import DEVICE, OperatorProcess, digits_task, finished
    from tests.support.waiting import wait_for

    result: dict = {"injected": dict.fromkeys((*operator_faults(replicas), *POD_FAULTS), 0), "missed": 0,
                    "failures": [], "kill_rounds": []}  # the task's status.round when each kill came
    workdir.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", FEDTASK_STORE_RETRY_SECONDS="5")
    with EmulatedCluster(workdir / "cluster") as cluster, \
            ApiKubelet(cluster, workdir / "kubelet", base_env=env, launcher=launcher) as kubelet:
        for node in ("node-a", "node-b"):
            cluster.apply(make_node(node, labels=DEVICE))
        for kind, round_ in pod_faults:
            kubelet.fail_pods(f"{OPERATOR_TASK}-r{round_:04d}-train-", 1, *POD_FAULTS[kind])
        mode = ("--leader-election", f"--lease-duration={LEASE_SECONDS}", "--lease-namespace=default") if lease \
            else ("--standalone",)

        def make(name: str) -> OperatorProcess:
            process = OperatorProcess(cluster, s3, workdir / f"operator-{name}.log", *mode)
            if tree:  # the operator from another source tree (e.g. `git archive` of a commit)
                process.env["PYTHONPATH"] = os.pathsep.join(str(Path(tree) / p) for p in ("operator", "worker_image"))
            return process
        operators = Replicas(make, replicas, (lambda: ((cluster.get(LEASES, "default", "fedtask-operator") or {})
                                                       .get("spec") or {}).get("holderIdentity") or "")
                             if lease else None)
        started = time.monotonic()
        operators.start()
        cluster.apply(digits_task(OPERATOR_TASK, rounds=rounds, scheduling={"policy": POLICY}))
        status: dict | None = None
        try:
            inject_kills(kills, started, operators, result, lambda: finished(cluster, OPERATOR_TASK), lambda: (
                (cluster.get(FEDERATEDTASKS, "default", OPERATOR_TASK) or {}).get("status") or {}).get("round", 0))

            def done() -> dict | None:
                exited = operators.exited()
                if exited:
                    raise RuntimeError(exited)
                return finished(cluster, OPERATOR_TASK)
            try:
                status = wait_for(done, timeout=timeout, interval=0.1)
            except (AssertionError, RuntimeError) as error:
                result["failures"].append(str(error))
            result["seconds"] = time.monotonic() - started

            def settled() -> bool:
                """every pod of the task finished or gone"""
                return not kubelet.processes.running() and all(
                    (pod.get("status") or {}).get("phase") in FINISHED_POD_PHASES for pod in cluster.objects(PODS))
            try:
                wait_for(settled, timeout=20, interval=0.2)
            except AssertionError:
                pass
        finally:
            operators.stop()
        time.sleep(0.5)  # the test kubelet's last status writes
        status = status or (cluster.get(FEDERATEDTASKS, "default", OPERATOR_TASK) or {}).get("status") or {}
        task = cluster.get(FEDERATEDTASKS, "default", OPERATOR_TASK) or {}
        uid = task.get("metadata", {}).get("uid")
        live = cluster.objects(PODS)
        versions = [v for v in cluster.history(FEDERATEDTASKS) if v["metadata"]["name"] == OPERATOR_TASK]
        pod_versions = list(cluster.history(PODS))
        started_pods = list(kubelet.started)
        for _name, exit_code, _reason in kubelet.failed:
            kind = next(k for k, (code, _) in POD_FAULTS.items() if code == exit_code)
            result["injected"][kind] += 1
    result.update(check_operator_run(rounds, status, versions, pod_versions, started_pods, live, uid,
                                     sum(result["injected"][kind] for kind in POD_FAULTS)))
    result.update(failovers=operators.failovers, paused_stood_down=operators.paused_then_stood_down())
    result["model"] = s3_hash(s3.client(), (status.get("model") or {}).get("uri"))
    return result


def inject_kills(kills, started: float, operators: Replicas, result: dict, done, current_round) -> None:
    """Each of `kills` ((seconds after `started`, param, kind) triples) to `operators` in turn (`Replicas.inject`:
    SIGKILL and start again `param` s later, or SIGSTOP for `param` s and SIGCONT); a fault that comes after `done()`
    is counted as missed. `current_round()`: the task's status.round then."""
    for at, param, kind in kills:
        while time.monotonic() - started < at and not done():
            time.sleep(0.05)
        if done():
            result["missed"] += 1  # the task ended before the kill time
            continue
        result["kill_rounds"].append(current_round())
        operators.inject(kind, param, result)


def operator_faults(replicas: int) -> tuple[str, ...]:
    """The operator fault kinds of a run: SIGKILL, and with several replicas also SIGSTOP of the leader."""
    return OPERATOR_FAULTS if replicas > 1 else OPERATOR_FAULTS[:1]


def check_operator_run(rounds: int, status: dict, versions: list[dict], pod_versions: list[dict],
                       started_pods: list[str], live: list[dict], uid: str | None, pod_failures: int) -> dict:
    """What the API server stored for one task: `status` (final), every stored version of the task and of its pods,
    the pod names the kubelet started (in order), the pods left, the task's uid and how many pod failures were
    injected. Returns the rounds lost and duplicated, pods created twice, retries nobody asked for, orphaned pods
    and status regressions (each an empty list or 0 when all is well)."""
    result: dict = {}
    history = [entry.get("round") for entry in status.get("history") or []]
    result["phase"] = status.get("phase")
    result["history"] = history
    result["lost"] = sorted(set(range(1, rounds + 1)) - set(history))
    result["duplicated"] = sorted({r for r in history if history.count(r) > 1})
    # Pods: one name is one pod (deterministic names); created twice = two uids under one name, or started twice.
    uids: dict[str, set] = {}
    for version in pod_versions:
        uids.setdefault(version["metadata"]["name"], set()).add(version["metadata"].get("uid"))
    result["pods"] = len(uids)
    result["pods_duplicated"] = sorted({n for n, u in uids.items() if len(u) > 1}
                                       | {n for n in started_pods if started_pods.count(n) > 1})
    retries = [n for n in uids if re.search(r"-a\d+$", n)]
    result["pod_retries"] = len(retries)
    result["pod_retries_not_injected"] = max(0, len(retries) - pod_failures)
    # Orphaned: still pending or running once the task is done, or owned by nothing alive.
    result["pods_orphaned"] = sorted(
        p["metadata"]["name"] for p in live
        if (p.get("status") or {}).get("phase") not in FINISHED_POD_PHASES
        or uid not in {ref.get("uid") for ref in p["metadata"].get("ownerReferences") or []})
    # The status as stored, version after version: round, history and phase never go back.
    regressions = []
    final_history = [entry.get("round") for entry in status.get("history") or []]
    last_round, done = 0, False
    for version in versions:
        st = version.get("status") or {}
        seen = [entry.get("round") for entry in st.get("history") or []]
        if final_history[:len(seen)] != seen:
            regressions.append({"history": seen})
        if (st.get("round") or 0) < last_round:
            regressions.append({"round": st.get("round"), "after": last_round})
        last_round = max(last_round, st.get("round") or 0)
        if done and st.get("phase") not in ("Succeeded", "Failed"):
            regressions.append({"phase": st.get("phase"), "after": "finished"})
        done = done or st.get("phase") in ("Succeeded", "Failed")
    result["regressions"] = regressions
    result["status_versions"] = len(versions)
    return result


def s3_hash(client, uri: str | None) -> str | None:
    """sha256 of the object at `uri` (s3://bucket/key) read with the minio `client`."""
    if not uri or not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[len("s3://"):].partition("/")
    response = client.get_object(bucket, key)
    try:
        return hashlib.sha256(response.read()).hexdigest()
    finally:
        response.close()
        response.release_conn()


def operator_plan(seed: int, rounds: int, window: float, pod_faults: bool, replicas: int = 1) -> tuple[list, list]:
    """The faults of one seed: 1-3 operator kills at random times within `window` (each down 0-2 s); with several
    `replicas`, instead one SIGKILL of the leader (down 0-2 s) and one SIGSTOP of the leader for 1.5-2.5 lease
    durations, in random order at random times within `window`; and with `pod_faults` one crashed and one OOM-killed
    train pod in two random rounds. Operator faults are (time, param, kind) triples (`Replicas.inject`)."""
    rng = random.Random(seed)
    if replicas > 1:
        kinds = list(OPERATOR_FAULTS)
        rng.shuffle(kinds)
        times = sorted(rng.uniform(1.0, window) for _ in kinds)
        kills = [(at, rng.uniform(0.0, 2.0) if kind == "operator_sigkill" else rng.uniform(1.5, 2.5) * LEASE_SECONDS,
                  kind) for at, kind in zip(times, kinds, strict=True)]
    else:
        kills = sorted((rng.uniform(1.0, window), rng.uniform(0.0, 2.0), "operator_sigkill")
                       for _ in range(rng.choice((1, 2, 3))))
    faults = []
    if pod_faults:
        chosen = rng.sample(range(1, rounds + 1), k=min(2, rounds))
        faults = list(zip(POD_FAULTS, chosen, strict=False))
    return kills, faults


def operator_main(args) -> dict:
    from fedtask_operator.local.forkserver import ForkServer
    from tests.support.s3 import run_s3_server

    base = Path(tempfile.mkdtemp(prefix="fedtask-faults-operator-"))
    try:
        with run_s3_server() as s3, ForkServer(preload_datasets=["digits"]) as launcher:
            s3.client().make_bucket("fedtask")
            os.environ.update(s3.env)  # the store settings, as the operator and pods get them in a cluster
            peers = [operator_run(base / f"uninterrupted-{i}", args.rounds, s3, launcher, tree=args.operator_tree,
                                  lease=args.leader_election, replicas=args.replicas) for i in (1, 2)]
            results = faulted_seeds(args, peers, lambda seed, kills, faults: operator_run(
                base / f"seed-{seed}", args.rounds, s3, launcher, kills, faults, tree=args.operator_tree,
                lease=args.leader_election, replicas=args.replicas))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    runtime = f"fedtask operator ({operator_mode(args)}) on the kmock API emulator, pods run by the test kubelet"
    summary = operator_summary(args, peers, results, runtime,
                               f"digits MLP, 4 devices, 2 per round, {args.rounds} rounds, policy {POLICY}, "
                               "podRetryLimit 1")
    if args.keep:
        summary["workdir"] = str(base)
    return summary


def operator_mode(args) -> str:
    """How the operator runs, for the JSON's runtime."""
    if args.replicas > 1:
        return (f"kopf, {args.replicas} replicas started together with --leader-election, {LEASE_SECONDS} s lease; "
                "the leader SIGKILLed and restarted, or SIGSTOPped past the lease and SIGCONTed")
    return "kopf, " + (f"--leader-election, {LEASE_SECONDS} s lease" if args.leader_election else "--standalone")


def faulted_seeds(args, peers: list[dict], run) -> list[dict]:
    """`run(seed, kills, pod_faults)` for seeds 0.. with each seed's fault plan (`operator_plan`, within
    `--fault-window` (0.9) x the uninterrupted peers' time); with `--time-budget S`, no seed starts that would likely
    end more than S seconds after the benchmark started (a seed is assumed to take as long as the longest so far)."""
    window = min(p["seconds"] for p in peers) * args.fault_window
    results: list[dict] = []
    for seed in range(args.seeds):
        if results and args.time_budget:
            longest = max(r["seconds"] for r in results) + 15  # + deleting the task and waiting for its pods
            if time.monotonic() - STARTED + longest > args.time_budget:
                print(f"time budget: {len(results)} of {args.seeds} seeds run", file=sys.stderr, flush=True)
                break
        kills, faults = operator_plan(seed, args.rounds, window, not args.no_pod_faults, args.replicas)
        result = run(seed, kills, faults)
        results.append({"seed": seed, **result})
        print(f"seed {seed}: {result['phase']} in {result['seconds']:.1f}s, injected {result['injected']}",
              file=sys.stderr, flush=True)
    return results


def by_fault_kind(results: list[dict]) -> dict:
    """Per operator fault kind: how many were injected and the failover times (the fault to the Lease held by another
    identity); for SIGSTOP also how many paused leaders logged, once resumed, that they had lost the Lease."""
    report = {}
    for kind in OPERATOR_FAULTS:
        times = sorted(seconds for r in results for k, seconds in r["failovers"] if k == kind and seconds is not None)
        if not any(k == kind for r in results for k, _ in r["failovers"]):
            continue
        entry: dict = {"injected": sum(r["injected"].get(kind, 0) for r in results),
                       "failovers_measured": len(times),
                       "no_failover": sum(1 for r in results for k, s in r["failovers"] if k == kind and s is None)}
        if times:
            entry["failover_seconds"] = {"min": times[0], "median": round(statistics.median(times), 2),
                                         "max": times[-1], "mean": round(sum(times) / len(times), 2)}
        if kind == "operator_sigstop":  # a leader paused before it logged acquiring the Lease is not counted
            stood_down = [flag for r in results for flag in r["paused_stood_down"] if flag is not None]
            entry["resumed_leaders_that_logged_losing_the_lease"] = f"{sum(stood_down)} of {len(stood_down)}"
            entry["paused_before_logging_the_acquisition"] = sum(
                flag is None for r in results for flag in r["paused_stood_down"])
        report[kind] = entry
    return report


def operator_summary(args, peers: list[dict], results: list[dict], runtime: str, task: str) -> dict:
    """The one JSON line of `--target operator`: the faulted seeds' checks summed, against the uninterrupted peers."""
    deterministic = peers[0]["model"] is not None and peers[0]["model"] == peers[1]["model"]
    uninterrupted_seconds = min(p["seconds"] for p in peers)
    expected = peers[0]["model"]

    def bad(r: dict) -> bool:
        return bool(r["phase"] != "Succeeded" or r["failures"] or r["lost"] or r["duplicated"] or r["regressions"]
                    or r["pods_duplicated"] or r["pods_orphaned"] or r["pod_retries_not_injected"]
                    or (deterministic and r["model"] != expected))
    faulted_mean = sum(r["seconds"] for r in results) / len(results)
    summary = {
        "benchmark": "faults", "target": "operator", "api": args.api, "runtime": runtime, "task": task,
        "seeds": len(results), "seeds_requested": args.seeds,
        "faults_injected": {kind: sum(r["injected"][kind] for r in results) for kind in results[0]["injected"]},
        "kills_after_the_task_ended": sum(r["missed"] for r in results),
        "operator_kills_by_status_round": {str(n): sum(r["kill_rounds"].count(n) for r in results)
                                           for n in sorted({n for r in results for n in r["kill_rounds"]})},
        "runs_completed": sum(r["phase"] == "Succeeded" for r in results),
        "rounds_lost": sum(len(r["lost"]) for r in results),
        "rounds_duplicated": sum(len(r["duplicated"]) for r in results),
        "pods_duplicated": sum(len(r["pods_duplicated"]) for r in results),
        "pod_retries_not_injected": sum(r["pod_retries_not_injected"] for r in results),
        "pods_orphaned": sum(len(r["pods_orphaned"]) for r in results),
        "status_regressions": sum(len(r["regressions"]) for r in results),
        "status_versions_checked": sum(r["status_versions"] for r in results),
        "training_deterministic": deterministic,
        "final_model_identical": sum(r["model"] == expected for r in results) if deterministic else None,
        "uninterrupted_seconds": round(uninterrupted_seconds, 2),
        "faulted_mean_seconds": round(faulted_mean, 2),
        "faulted_vs_uninterrupted": round(faulted_mean / uninterrupted_seconds, 3),
        "failures": [{k: r[k] for k in ("seed", "phase", "history", "lost", "duplicated", "regressions",
                                        "pods_duplicated", "pods_orphaned", "pod_retries_not_injected", "failures",
                                        "duplicate_creations", "fault_timeline") if k in r}
                     for r in results if bad(r)],
    }
    if args.leader_election:
        summary["replicas"] = args.replicas
        summary["by_fault_kind"] = by_fault_kind(results)
    for i, peer in enumerate(peers, 1):
        if peer["phase"] != "Succeeded" or peer["failures"] or peer["pods_duplicated"] or peer["pods_orphaned"]:
            summary["failures"].append({f"uninterrupted-{i}": {k: peer[k] for k in (
                "phase", "history", "pods_duplicated", "pods_orphaned", "failures")}})
    return summary


# --- `--target operator --api real`: the same on the real control plane (hack/local-cluster.sh) ---------------------
# A train pod's process on a node agent, ended by a signal from outside: the agent reports what the kernel says, exit
# 128 + the signal with reason Error. A crash is SIGSEGV (exit 139; exit 1 would need a debugger in the process); an
# OOM kill is SIGKILL (exit 137, as the kernel's OOM killer ends it), but reason Error, not OOMKilled: the node agent
# sets no memory limit, so it cannot tell an OOM kill from any other SIGKILL.
REAL_POD_SIGNALS = {"train_pod_crash": signal.SIGSEGV, "train_pod_oom": signal.SIGKILL}


def real_lease_name(cluster) -> str:
    """The chart's Lease (the Deployment's --lease-name, scaled to zero meanwhile): the chart's admission fence checks
    the leader term of pods created under it, so the host replicas are fenced on the server as the chart's are."""
    from tests.support.cluster import operator_deployment

    return operator_deployment(cluster)["metadata"]["name"]


def lease_holder(cluster):
    """A function reading the holderIdentity of the faults' Lease on the real API server ("" when none or unread)."""
    import kubernetes

    from tests.support.cluster import NAMESPACE

    leases = kubernetes.client.CoordinationV1Api(cluster.api_client())
    name = real_lease_name(cluster)

    def holder() -> str:
        try:
            lease = leases.read_namespaced_lease(name, NAMESPACE, _request_timeout=5)
        except Exception:  # none yet (404), or the API server slow: no holder seen this time
            return ""
        return (lease.spec and lease.spec.holder_identity) or ""
    return holder


def host_pid(log: Path) -> int | None:
    """The host PID of the process whose stdout is `log` (a node agent's pod: it runs in the agent's PID namespace,
    whose numbers are not the host's)."""
    target = str(log)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "fd" / "1") == target and os.getpgid(int(entry.name)) == int(entry.name):
                    return int(entry.name)
            except OSError:
                continue
    return None


class PodFaulter:
    """Ends the first train pod (not a retry) of the task that starts in each fault's round, on whichever node agent
    runs it, with the fault's signal; a fault whose round has no train pod left running moves to the next round. Pod
    folders (NODES/<node>/pods/<namespace>/<pod>) outlive their pods, so only those of the task's uid count."""

    def __init__(self, nodes: Path, namespace: str, task: str, faults, task_uid):
        self.nodes, self.namespace, self.task, self.task_uid = nodes, namespace, task, task_uid
        self.pending = sorted(faults, key=lambda fault: fault[1])  # (kind, round)
        self.done: list[tuple[str, str, int]] = []  # (kind, pod, round)
        self._owners: dict[Path, tuple[int, set]] = {}  # pod folder -> (pod.json's mtime, its owners' uids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodFaulter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _ours(self, folder: Path) -> bool:
        uid = self.task_uid()
        try:
            changed = (folder / "pod.json").stat().st_mtime_ns
            if folder not in self._owners or self._owners[folder][0] != changed:
                pod = json.loads((folder / "pod.json").read_text())
                self._owners[folder] = (changed, {ref.get("uid") for ref in
                                                  pod["metadata"].get("ownerReferences") or []})
        except (OSError, ValueError, KeyError):
            return False
        return uid is not None and uid in self._owners[folder][1]

    def _run(self) -> None:
        while not self._stop.wait(0.03) and self.pending:
            kind, round_ = self.pending[0]
            folders = [f for f in self.nodes.glob(f"*/pods/{self.namespace}/{self.task}-r*")
                       if self._ours(f)]
            train = [f for f in folders if f.name.startswith(f"{self.task}-r{round_:04d}-train-")
                     and not re.search(r"-a\d+$", f.name)]
            for folder in train:
                if (folder / "process.json").exists() and not (folder / "exit.json").exists() \
                        and folder.name not in {pod for _, pod, _ in self.done}:
                    pid = host_pid(folder / "log")
                    if pid is not None:
                        try:
                            os.killpg(pid, REAL_POD_SIGNALS[kind])
                        except ProcessLookupError:
                            continue
                        self.done.append((kind, folder.name, round_))
                        self.pending.pop(0)
                        break
            else:
                later = any(int(f.name[len(self.task) + 2:len(self.task) + 6]) > round_ for f in folders)
                if later:  # the round's train pods ended before one could be signalled
                    self.pending[0] = (kind, round_ + 1)


def real_run(cluster, workdir: Path, rounds: int, kills=(), pod_faults=(), lease: bool = False,
             timeout: float = 900, replicas: int = 1) -> dict:
    """One task of `rounds` rounds on the installed real cluster (namespace fedtask; the chart's operator scaled to
    zero), `fedtask operator` host processes (`replicas` of them with the lease) faulted at each of `kills`
    (`Replicas.inject`), `pod_faults` signalled to train pods by `PodFaulter`; the same checks as `operator_run`, from
    watches of the task and its pods and the node agents' Started events. The task is deleted (and its pods gone)
    before this returns."""
    from tests.support.cluster import (
        NAMESPACE,
        CreationRecorder,
        TaskRecorder,
        host_operator_command,
        minio_deployment,
        store_credentials,
    )
    from tests.support.operator import OperatorProcess, digits_task
    from tests.support.waiting import wait_for

    result: dict = {"injected": dict.fromkeys((*operator_faults(replicas), *POD_FAULTS), 0), "missed": 0,
                    "failures": [], "kill_rounds": []}
    workdir.mkdir(parents=True)
    mode = ("--leader-election", f"--lease-duration={LEASE_SECONDS}", f"--lease-namespace={NAMESPACE}",
            f"--lease-name={real_lease_name(cluster)}") if lease else ("--standalone",)
    command, env = host_operator_command(cluster, *mode)

    def make(name: str) -> OperatorProcess:
        process = OperatorProcess.__new__(OperatorProcess)  # the same start/kill/stop, with the chart's command
        process.args, process.log_path, process.process = command, workdir / f"operator-{name}.log", None
        process.env = dict(env)
        return process
    operators = Replicas(make, replicas, lease_holder(cluster) if lease else None)
    if lease:  # the previous run's Lease (its holder gone) would hold the first leader back a lease duration
        cluster.kubectl("delete", "lease", real_lease_name(cluster), "-n", NAMESPACE, "--ignore-not-found")
    task = digits_task(OPERATOR_TASK, rounds=rounds, scheduling={"policy": POLICY})
    task["metadata"]["namespace"] = NAMESPACE
    selector = f"fedtask.io/task={OPERATOR_TASK}"

    def task_pods() -> list[dict]:
        return cluster.get_json("pods", "-n", NAMESPACE, "-l", selector)["items"]

    wait_for(lambda: not task_pods() and cluster.kubectl("get", "federatedtask", OPERATOR_TASK, "-n", NAMESPACE,
                                                         check=False).returncode != 0,
             timeout=120, interval=1, message="the previous run's task and pods to go")
    with CreationRecorder(cluster, OPERATOR_TASK) as pods, TaskRecorder(cluster, OPERATOR_TASK) as tasks, \
            PodFaulter(cluster.dir / "nodes", NAMESPACE, OPERATOR_TASK, pod_faults,
                       lambda: tasks.latest.get("metadata", {}).get("uid")) as faulter:
        started = time.monotonic()
        operators.start()
        try:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(task))

            def current() -> dict:
                return tasks.latest.get("status") or {}

            def finished() -> bool:
                return current().get("phase") in ("Succeeded", "Failed")
            inject_kills(kills, started, operators, result, finished, lambda: current().get("round", 0))

            def done() -> bool:
                exited = operators.exited()
                if exited:
                    raise RuntimeError(exited)
                return finished()
            try:
                wait_for(done, timeout=timeout, interval=0.2)
            except (AssertionError, RuntimeError) as error:
                result["failures"].append(str(error))
            result["seconds"] = time.monotonic() - started
            try:
                wait_for(lambda: all((p.get("status") or {}).get("phase") in FINISHED_POD_PHASES
                                     for p in task_pods()), timeout=30, interval=0.5)
            except AssertionError:
                pass
            time.sleep(1)  # the node agents' last status writes reach the watches
            final = cluster.get_json("federatedtask", OPERATOR_TASK, "-n", NAMESPACE)
            live = task_pods()
        finally:
            try:
                cluster.kubectl("delete", "federatedtask", OPERATOR_TASK, "-n", NAMESPACE, "--wait=true",
                                "--ignore-not-found", timeout=120)
            finally:
                operators.stop()
    status, uid = final.get("status") or {}, final["metadata"]["uid"]
    versions = [v for v in tasks.versions if v["metadata"].get("uid") == uid]
    pod_versions = [{"metadata": {"name": name, "uid": pod_uid}}
                    for name, uids in pods.uids.items() for pod_uid in uids]
    pod_uids = {pod_uid for uids in pods.uids.values() for pod_uid in uids}
    events = cluster.get_json("events", "-n", NAMESPACE, "--field-selector", "reason=Started")["items"]
    started_pods = [e["involvedObject"]["name"] for e in events if e["involvedObject"].get("uid") in pod_uids]
    result["watch_errors"] = len(pods.errors) + len(tasks.errors)
    result["pod_fault_exits"] = {}
    for kind, name, _round in faulter.done:
        result["injected"][kind] += 1
        terminated = ((((pods.pods.get(name) or {}).get("status") or {}).get("containerStatuses") or [{}])[0]
                      .get("state") or {}).get("terminated") or {}
        result["pod_fault_exits"].setdefault(kind, []).append([terminated.get("exitCode"), terminated.get("reason")])
    result["pod_faults_not_injected"] = [list(fault) for fault in faulter.pending]
    result.update(check_operator_run(rounds, status, versions, pod_versions, started_pods, live, uid,
                                     len(faulter.done)))
    result.update(failovers=operators.failovers, paused_stood_down=operators.paused_then_stood_down())
    if result["pods_duplicated"]:  # when each was created, against the faults (seconds after the first start)
        result["duplicate_creations"] = {name: [round(seen - started, 2) for seen, pod in pods.created
                                                if pod["metadata"]["name"] == name]
                                         for name in result["pods_duplicated"]}
        result["fault_timeline"] = [{key: round(value - started, 2) if isinstance(value, float) else value
                                     for key, value in event.items()} for event in operators.timeline]
    result["pods_started_events"] = len(started_pods)
    result["record"] = {"rounds": rounds, "status": status, "versions": versions, "pod_versions": pod_versions,
                        "started_pods": started_pods, "live": live, "uid": uid, "pod_failures": len(faulter.done)}
    access, secret = store_credentials(cluster, minio_deployment(cluster))
    import minio

    result["model"] = s3_hash(minio.Minio("127.0.0.1:9000", access_key=access, secret_key=secret, secure=False),
                              (status.get("model") or {}).get("uri"))
    return result


def real_main(args, cluster=None, seeds: list | None = None) -> dict:
    """`--api real`: peers and seeds on one real cluster (`cluster`, or one brought up for this run and taken down).
    `seeds` (a list) receives each faulted seed's result, with `record`: what `check_operator_run` was given."""
    from tests.support.cluster import installed_cluster, scale_operator

    base = Path(tempfile.mkdtemp(prefix="fedtask-faults-real-"))
    try:
        with contextlib.ExitStack() as stack:
            if cluster is None:
                cluster = stack.enter_context(installed_cluster(base / "cluster"))
            else:  # the caller's cluster gets its operator back
                stack.callback(scale_operator, cluster, 1)
            scale_operator(cluster, 0)
            peers = [real_run(cluster, base / f"uninterrupted-{i}", args.rounds, lease=args.leader_election,
                              replicas=args.replicas) for i in (1, 2)]
            print(f"uninterrupted: {[round(p['seconds'], 1) for p in peers]} s", file=sys.stderr, flush=True)
            results = faulted_seeds(args, peers, lambda seed, kills, faults: real_run(
                cluster, base / f"seed-{seed}", args.rounds, kills, faults, lease=args.leader_election,
                replicas=args.replicas))
            if seeds is not None:
                seeds.extend(results)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    runtime = (f"fedtask operator ({operator_mode(args)}) as host processes against the real control "
               "plane (hack/local-cluster.sh: etcd, kube-apiserver, kube-scheduler, kube-controller-manager, the "
               "chart's MinIO), pods run by the node agents; train-pod faults are signals to the pod's process: "
               "crash SIGSEGV (exit 139), OOM SIGKILL (exit 137, reason Error: the agent cannot report OOMKilled)")
    summary = operator_summary(args, peers, results, runtime,
                               f"digits MLP, 4 devices, 2 per round, {args.rounds} rounds, policy {POLICY}, "
                               "podRetryLimit 1")
    summary["pod_fault_exits"] = {kind: sorted({tuple(e) for r in results for e in r["pod_fault_exits"].get(kind, [])})
                                  for kind in REAL_POD_SIGNALS}
    summary["pod_faults_not_injected"] = sum(len(r["pod_faults_not_injected"]) for r in results)
    summary["watch_errors"] = sum(r["watch_errors"] for r in results + peers)
    if args.keep:
        summary["workdir"] = str(base)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("run", "operator"), default="run",
                        help="kill `fedtask run` (default) or the operator process against the emulated API")
    parser.add_argument("--seeds", type=int, default=20, help="faulted runs, one workdir each (default 20)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-pod-faults", action="store_true",
                        help="--target operator: only kill the operator (no crashed or OOM-killed train pods)")
    parser.add_argument("--leader-election", action="store_true",
                        help=f"--target operator: run it with the lease ({LEASE_SECONDS} s), as the chart does; a "
                             "restarted operator then waits for its killed predecessor's lease to run out")
    parser.add_argument("--replicas", type=int, default=1, metavar="N",
                        help="--target operator: N operator replicas started together with the lease (N > 1 implies "
                             "--leader-election); the leader is SIGKILLed and restarted, and SIGSTOPped for 1.5-2.5 "
                             "lease durations and SIGCONTed; the JSON reports each kind and its failover times")
    parser.add_argument("--fault-window", type=float, default=0.9, metavar="F",
                        help="--target operator: operator faults come within F x the uninterrupted run's time")
    parser.add_argument("--api", choices=("kmock", "real"), default="kmock",
                        help="--target operator: the API emulator (default), or the real control plane "
                             "(hack/local-cluster.sh, one cluster for all seeds; needs root and the cluster tools)")
    parser.add_argument("--time-budget", type=float, default=0.0, metavar="S",
                        help="--target operator: start no seed that would likely end more than S seconds after the "
                             "benchmark started (then fewer seeds than --seeds run; the JSON says how many)")
    parser.add_argument("--operator-tree", default="", metavar="DIR",
                        help="--target operator: run the operator from this source tree (e.g. `git archive HEAD`)")
    parser.add_argument("--keep", action="store_true", help="keep the workdirs and logs (printed in the JSON)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.rounds < 1:
        parser.error("--seeds and --rounds must be at least 1")
    if not 1 <= args.replicas <= 5:
        parser.error(f"--replicas must be between 1 and 5, not {args.replicas}")
    if not 0 < args.fault_window <= 1:
        parser.error(f"--fault-window must be in (0, 1], not {args.fault_window}")
    args.leader_election = args.leader_election or args.replicas > 1
    if args.target == "operator":
        if args.api == "real" and args.operator_tree:
            parser.error("--operator-tree is for --api kmock")
        summary = real_main(args) if args.api == "real" else operator_main(args)
        print(json.dumps(summary))
        return 0 if not summary["failures"] else 1
    base = Path(tempfile.mkdtemp(prefix="fedtask-faults-"))
    try:
        first_seconds, first_hash, first = uninterrupted(base / "uninterrupted-1", args.rounds)
        second_seconds, second_hash, _ = uninterrupted(base / "uninterrupted-2", args.rounds)
        deterministic = first_hash is not None and first_hash == second_hash
        uninterrupted_seconds = min(first_seconds, second_seconds)
        results = [faulted_seed(seed, base / f"seed-{seed}", args.rounds, uninterrupted_seconds * 0.95)
                   for seed in range(args.seeds)]
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    completed = [r for r in results if r["phase"] == "Succeeded" and r["exit_codes"][-1] == 0]
    identical = [r for r in results if r["model"] == first_hash]
    faulted_mean = sum(r["seconds"] for r in results) / len(results)
    summary = {
        "benchmark": "faults", "target": "run", "runtime": "fedtask run (local)",
        "task": f"{TASK}, {args.rounds} rounds", "seeds": args.seeds,
        "faults_injected": {kind: sum(r["injected"][kind] for r in results) for kind in ("sigkill", "sigint")},
        "kills_after_the_run_ended": sum(r["missed"] for r in results),
        "runs_completed": len(completed),
        "rounds_lost": sum(len(r["lost"]) for r in results),
        "rounds_duplicated": sum(len(r["duplicated"]) for r in results),
        "status_regressions": sum(len(r["regressions"]) for r in results),
        "training_deterministic": deterministic,
        "final_model_identical": len(identical) if deterministic else None,
        "starts_max": max(r["starts"] for r in results),
        "uninterrupted_seconds": round(uninterrupted_seconds, 2),
        "faulted_mean_seconds": round(faulted_mean, 2),
        "faulted_vs_uninterrupted": round(faulted_mean / uninterrupted_seconds, 3),
        "failures": [{k: r[k] for k in ("seed", "phase", "history", "lost", "duplicated", "regressions",
                                        "exit_codes")}
                     for r in results if r not in completed or r["lost"] or r["duplicated"] or r["regressions"]
                     or (deterministic and r["model"] != first_hash)],
    }
    if args.keep:
        summary["workdir"] = str(base)
    if first.get("status", {}).get("phase") != "Succeeded":
        summary["failures"].append({"uninterrupted": first.get("status", {}).get("phase")})
    print(json.dumps(summary))
    return 0 if not summary["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
