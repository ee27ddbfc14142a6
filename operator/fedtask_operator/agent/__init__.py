"""The node agent: a process kubelet (`fedtask_operator.local.kubelet`) that serves one Node of a real Kubernetes
API server (`fedtask node-agent`, used by `hack/local-cluster.sh`).

It uses both runtimes' neighbours (the Kubernetes client and the local process kubelet), so it sits in the top layer
next to `fedtask_operator.cli` (see `.importlinter`).
"""
