"""The checks benchmarks/faults.py --target operator makes of what the API server stored: a clean record passes, and a
lost or repeated round, a pod created or started twice, a retry nobody injected, a pod left running and a status that
goes back are each reported."""
import copy

from tests.support.benchmarks import load_benchmark

UID = "task-uid"

faults = load_benchmark("faults")


def pod(name: str, uid: str, phase: str = "Succeeded") -> dict:
    return {"metadata": {"name": name, "uid": uid, "ownerReferences": [{"uid": UID}]}, "status": {"phase": phase}}


def clean_record(rounds: int = 3) -> dict:
    """A faultless 3-round run: one init pod, two train pods and an aggregate pod per round, each once."""
    names = ["t-init"] + [f"t-r{r:04d}-{stage}" for r in range(1, rounds + 1)
                          for stage in ("train-d001", "train-d002", "aggregate")]
    history = [{"round": r} for r in range(1, rounds + 1)]
    versions = [{"status": {"round": r, "phase": "Running", "history": history[:r - 1]}} for r in range(1, rounds + 1)]
    versions.append({"status": {"round": rounds, "phase": "Succeeded", "history": history}})
    return {"rounds": rounds, "status": versions[-1]["status"], "versions": versions,
            "pod_versions": [pod(name, f"uid-{name}") for name in names], "started_pods": list(names),
            "live": [], "uid": UID, "pod_failures": 0}


def check(record: dict) -> dict:
    return faults.check_operator_run(**record)


def test_a_clean_record_reports_nothing():
    result = check(clean_record())
    assert result["phase"] == "Succeeded" and result["history"] == [1, 2, 3]
    assert result["lost"] == result["duplicated"] == result["pods_duplicated"] == result["pods_orphaned"] == []
    assert result["regressions"] == [] and result["pod_retries_not_injected"] == 0 and result["pods"] == 10


def test_a_lost_and_a_repeated_round_are_reported():
    record = clean_record()
    record["status"] = copy.deepcopy(record["status"])
    record["status"]["history"] = [{"round": 1}, {"round": 1}, {"round": 3}]
    result = check(record)
    assert result["lost"] == [2] and result["duplicated"] == [1]


def test_a_pod_created_twice_or_started_twice_is_reported():
    record = clean_record()
    record["pod_versions"].append(pod("t-r0002-aggregate", "another-uid"))  # deleted and created again
    record["started_pods"].append("t-r0003-train-d001")  # run a second time
    assert check(record)["pods_duplicated"] == ["t-r0002-aggregate", "t-r0003-train-d001"]


def test_a_retry_counts_only_beyond_the_injected_failures():
    record = clean_record()
    record["pod_versions"].append(pod("t-r0002-train-d001-a1", "uid-retry"))
    assert check(record)["pod_retries_not_injected"] == 1
    record["pod_failures"] = 1
    assert check(record)["pod_retries_not_injected"] == 0


def test_a_pod_left_running_or_owned_by_another_task_is_orphaned():
    record = clean_record()
    record["live"] = [pod("t-r0003-train-d002", "x", phase="Running"), pod("t-r0003-aggregate", "y")]
    record["live"][1]["metadata"]["ownerReferences"] = [{"uid": "an-earlier-task"}]
    record["live"].append(pod("t-r0003-train-d001", "z"))  # finished and owned by the task: not orphaned
    assert check(record)["pods_orphaned"] == ["t-r0003-aggregate", "t-r0003-train-d002"]


def test_a_status_that_goes_back_is_a_regression():
    record = clean_record()
    record["versions"].insert(2, {"status": {"round": 1, "phase": "Running", "history": []}})  # round 2, then 1
    record["versions"].insert(1, {"status": {"round": 2, "history": [{"round": 2}]}})  # a history since rewritten
    record["versions"].append({"status": {"round": 3, "phase": "Running", "history": [{"round": 1}]}})
    regressions = check(record)["regressions"]
    assert {"round": 1, "after": 2} in regressions
    assert {"history": [2]} in regressions
    assert {"phase": "Running", "after": "finished"} in regressions
    assert {"history": [1]} not in regressions  # a prefix of the final history is no regression
