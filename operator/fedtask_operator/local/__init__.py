"""`fedtask run`: the operator's planner and scheduler on one machine, pods as processes, a folder as the store."""
