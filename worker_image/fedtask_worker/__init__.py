"""fedtask data plane: the stages every pod of a federated task runs (init, train, aggregate, adjust, publish)."""
__version__ = "0.1.0"
