"""fedtask control plane: the FederatedTask API, the round planner, the scheduler and the two runtimes."""
__version__ = "0.1.0"
