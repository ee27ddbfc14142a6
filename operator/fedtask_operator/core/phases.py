"""Phase, stage and state names (pure constants, no imports): one home for the strings the status and pods carry.

- a FederatedTask's `status.phase` and `status.stage` (printer columns, the CRD's enums);
- the state of one pod record in the status (`status.devices[].state`, `status.current.state`,
  `status.published[].state`);
- Kubernetes' own pod phases (`pod.status.phase`), which the planner, the scheduler's resource accounting and both
  runtimes read.

The same word may appear in several sets ("Succeeded" is a task phase, a record state, a pod phase and a condition
type in `conditions.py`): use the constant of the set the value belongs to.
"""
from __future__ import annotations

# A FederatedTask's status.phase
PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
PHASES = (PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED)
FINISHED_PHASES = (SUCCEEDED, FAILED)  # a finished task is never planned again

# A FederatedTask's status.stage (the round's step)
INITIALIZING = "Initializing"
SCHEDULING = "Scheduling"
TRAINING = "Training"
AGGREGATING = "Aggregating"
ADJUSTING = "Adjusting"
PUBLISHING = "Publishing"
STAGES = (INITIALIZING, SCHEDULING, TRAINING, AGGREGATING, ADJUSTING, PUBLISHING)

# The state of one pod record in the status
STATE_PENDING = "Pending"
STATE_RUNNING = "Running"
STATE_SUCCEEDED = "Succeeded"
STATE_FAILED = "Failed"  # after the retries
STATE_EXCLUDED = "Excluded"  # a straggler the round went on without
STATES = (STATE_PENDING, STATE_RUNNING, STATE_SUCCEEDED, STATE_FAILED, STATE_EXCLUDED)
UNFINISHED_STATES = (STATE_PENDING, STATE_RUNNING)

# Kubernetes' pod phases (core/v1 PodPhase)
POD_PENDING = "Pending"
POD_RUNNING = "Running"
POD_SUCCEEDED = "Succeeded"
POD_FAILED = "Failed"
POD_FINISHED_PHASES = (POD_SUCCEEDED, POD_FAILED)  # a pod in these phases holds no resources and never runs again
