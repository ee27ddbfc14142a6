#!/usr/bin/env bash
# Create the kind cluster of kind-config.yaml (1 control plane, 3 device workers, one of them a "GPU" node).
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
need kind kubectl
if kind get clusters | grep -qx "$CLUSTER"; then
  echo "kind cluster $CLUSTER exists"
else
  kind create cluster --name "$CLUSTER" --config "$REPO/kind-config.yaml" --wait 120s
fi
"$REPO/hack/fake-gpu.sh"
kubectl get nodes -L fedtask.io/device -L nvidia.com/gpu.present
