"""The pure core: the API types, the planner, the pod builders and the scheduler. No I/O library here."""
