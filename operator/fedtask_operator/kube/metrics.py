"""The operator's Prometheus metrics, every name written out in full (dashboards and alerts are checked against them).

The metrics are derived from status transitions (`record_status_change(old, new)`), so an operator that restarts
neither double-counts a round (the history record is already in the old status) nor misses one.
"""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fedtask_operator.core.compaction import round_count, round_devices
from fedtask_operator.core.naming import STAGE_ADJUST, STAGE_AGGREGATE, STAGE_TRAIN, STAGES
from fedtask_operator.core.phases import PHASES, STATE_FAILED, STATE_SUCCEEDED

TASK_LABELS = ("namespace", "task")
# stage label of fedtask_round_duration_seconds -> the history record's field
ROUND_STAGE_SECONDS = {"round": "durationSeconds", STAGE_TRAIN: "trainSeconds", STAGE_AGGREGATE: "aggregateSeconds",
                       STAGE_ADJUST: "adjustSeconds"}
POD_STAGES = STAGES  # the stage label of fedtask_pod_failures_total: the pods' fedtask.io/stage values
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
SCHEDULING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

ROUNDS_TOTAL = Counter("fedtask_rounds_total", "Rounds completed.", TASK_LABELS)
ROUND_DURATION_SECONDS = Histogram(
    "fedtask_round_duration_seconds", "Wall time of a round and of its stages (stage=train|aggregate|adjust|round).",
    TASK_LABELS + ("stage",), buckets=DURATION_BUCKETS)
TASK_ROUND = Gauge("fedtask_task_round", "The task's current round.", TASK_LABELS)
TASK_ACCURACY = Gauge("fedtask_task_accuracy", "Accuracy of the latest round's global model (after adjustment) on "
                      "the test split.",
                      TASK_LABELS)
TASK_VALIDATION_ACCURACY = Gauge("fedtask_task_validation_accuracy", "Accuracy of the latest round's global "
                                 "model on the validation split (what targetAccuracy, patience and best go by).",
                                 TASK_LABELS)
TASK_LOSS = Gauge("fedtask_task_loss", "Loss of the latest round's global model.", TASK_LABELS)
TASK_FAIRNESS = Gauge("fedtask_task_fairness", "Jain's index of the devices' participation in the task (1: even).",
                      TASK_LABELS)
DEVICES_SELECTED = Gauge("fedtask_devices_selected", "Devices asked to train in the current round.", TASK_LABELS)
DEVICES_RETURNED = Gauge("fedtask_devices_returned", "Devices whose updates arrived in the last finished round.",
                         TASK_LABELS)
STRAGGLERS_TOTAL = Counter("fedtask_stragglers_total", "Devices excluded from a round (late or failed).", TASK_LABELS)
UPDATES_REJECTED_TOTAL = Counter("fedtask_updates_rejected_total", "Updates the aggregator rejected as invalid.",
                                 TASK_LABELS)
POD_FAILURES_TOTAL = Counter("fedtask_pod_failures_total", "Failed pod attempts (stage=init|train|aggregate|adjust|"
                             "publish).", TASK_LABELS + ("stage",))
UPDATE_BYTES_TOTAL = Counter("fedtask_update_bytes_total", "Bytes of model updates uploaded by train pods.",
                             TASK_LABELS)
TASKS = Gauge("fedtask_tasks", "FederatedTasks by phase.", ("namespace", "phase"))
SCHEDULING_SECONDS = Histogram("fedtask_scheduling_seconds", "Time of one joint device selection.",
                               buckets=SCHEDULING_BUCKETS)
DEVICE_TRAIN_SECONDS = Gauge("fedtask_device_train_seconds", "A device's last train time (straggler heatmaps).",
                             TASK_LABELS + ("device", "node"))

PER_TASK_METRICS = (ROUNDS_TOTAL, ROUND_DURATION_SECONDS, TASK_ROUND, TASK_ACCURACY, TASK_LOSS, TASK_FAIRNESS,
                    TASK_VALIDATION_ACCURACY, DEVICES_SELECTED, DEVICES_RETURNED, STRAGGLERS_TOTAL,
                    UPDATES_REJECTED_TOTAL, POD_FAILURES_TOTAL, UPDATE_BYTES_TOTAL, DEVICE_TRAIN_SECONDS)


def serve(port: int, registry: CollectorRegistry = REGISTRY) -> None:
    """Expose /metrics on all interfaces (a background thread)."""
    start_http_server(port, registry=registry)


def record_status_change(namespace: str, task: str, old: dict | None, new: dict) -> None:
    """Update the metrics from one status transition of one task."""
    old = old or {}
    labels = (namespace, task)
    _start_counting(labels)
    if new.get("round") is not None:
        TASK_ROUND.labels(*labels).set(new["round"])
    new_devices = round_devices(new, task)  # a large round's devices are packed (core/compaction.py)
    if new.get("devices") is not None or new.get("deviceRows") is not None:
        DEVICES_SELECTED.labels(*labels).set(len(new_devices))
    if new.get("fairness") is not None:
        TASK_FAIRNESS.labels(*labels).set(float(new["fairness"]))

    seen_rounds = {record.get("round") for record in old.get("history") or []}
    for record in new.get("history") or []:
        if record.get("round") in seen_rounds:
            continue
        ROUNDS_TOTAL.labels(*labels).inc()
        for stage, key in ROUND_STAGE_SECONDS.items():
            if record.get(key) is not None:
                ROUND_DURATION_SECONDS.labels(*labels, stage).observe(float(record[key]))
        DEVICES_RETURNED.labels(*labels).set(round_count(record, "returned"))
        STRAGGLERS_TOTAL.labels(*labels).inc(round_count(record, "excluded"))
        UPDATES_REJECTED_TOTAL.labels(*labels).inc(round_count(record, "rejected"))
        if record.get("accuracy") is not None:
            TASK_ACCURACY.labels(*labels).set(float(record["accuracy"]))
        if record.get("validationAccuracy") is not None:
            TASK_VALIDATION_ACCURACY.labels(*labels).set(float(record["validationAccuracy"]))
        if record.get("loss") is not None:
            TASK_LOSS.labels(*labels).set(float(record["loss"]))

    same_round = old.get("round") == new.get("round")
    old_devices = {device.get("device"): device for device in round_devices(old, task)} if same_round else {}
    for device in new_devices:
        before = old_devices.get(device.get("device")) or {}
        failures = _failed_attempts(before, device)
        if failures > 0:
            POD_FAILURES_TOTAL.labels(*labels, STAGE_TRAIN).inc(failures)
        if device.get("state") == STATE_SUCCEEDED and before.get("state") != STATE_SUCCEEDED:
            result = device.get("result") or {}
            if result.get("bytes"):
                UPDATE_BYTES_TOTAL.labels(*labels).inc(float(result["bytes"]))
            if result.get("seconds") is not None:
                DEVICE_TRAIN_SECONDS.labels(*labels, device.get("device") or "", device.get("node") or "").set(
                    float(result["seconds"]))

    old_current, new_current = old.get("current") or {}, new.get("current") or {}
    if new_current and old_current.get("stage") == new_current.get("stage"):
        failures = _failed_attempts(old_current, new_current)
        if failures > 0:
            POD_FAILURES_TOTAL.labels(*labels, new_current.get("stage") or "unknown").inc(failures)


def _start_counting(labels: tuple[str, str]) -> None:
    """A task's counters and histograms exist at 0 from its first status on: Prometheus cannot see the first increase
    of a series that appears already at 1, so rate() and increase() would miss the first round and pod failure."""
    for counter in (ROUNDS_TOTAL, STRAGGLERS_TOTAL, UPDATES_REJECTED_TOTAL, UPDATE_BYTES_TOTAL):
        counter.labels(*labels)
    for stage in ROUND_STAGE_SECONDS:
        ROUND_DURATION_SECONDS.labels(*labels, stage)
    for stage in POD_STAGES:
        POD_FAILURES_TOTAL.labels(*labels, stage)


def _failed_attempts(before: dict, after: dict) -> int:
    """Pods that failed between two versions of one pod record: retries taken plus a final failure."""
    retries = max(0, int(after.get("attempts") or 0) - int(before.get("attempts") or 0))
    gave_up = after.get("state") == STATE_FAILED and before.get("state") != STATE_FAILED
    return retries + int(gave_up)


def set_task_counts(counts: dict[tuple[str, str], int]) -> None:
    """Set `fedtask_tasks` from a full count {(namespace, phase): n} (the index of every task)."""
    for namespace in {namespace for namespace, _ in counts} | _namespaces_with_task_series():
        for phase in PHASES:
            TASKS.labels(namespace, phase).set(counts.get((namespace, phase), 0))


def _namespaces_with_task_series() -> set[str]:
    return {sample.labels["namespace"] for metric in TASKS.collect() for sample in metric.samples}


def forget_task(namespace: str, task: str) -> None:
    """Remove every series of a deleted task."""
    for metric in PER_TASK_METRICS:
        for labels in _label_sets(metric):
            if labels.get("namespace") == namespace and labels.get("task") == task:
                metric.remove(*(labels[name] for name in metric._labelnames))


def _label_sets(metric) -> list[dict]:
    seen, out = set(), []
    for family in metric.collect():
        for sample in family.samples:
            key = tuple(sample.labels.get(name, "") for name in metric._labelnames)
            if key not in seen and all(name in sample.labels for name in metric._labelnames):
                seen.add(key)
                out.append(dict(zip(metric._labelnames, key)))
    return out
