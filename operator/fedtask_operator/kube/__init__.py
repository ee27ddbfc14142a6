"""The Kubernetes runtime: kopf handlers, the reconciler that applies plans through the API, metrics."""
