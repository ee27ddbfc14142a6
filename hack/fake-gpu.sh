#!/usr/bin/env bash
# Advertise fake nvidia.com/gpu capacity on nodes (a node status patch: the scheduler then counts GPUs as it would
# with NVIDIA's device plugin; the pods get no real GPU).
#   hack/fake-gpu.sh                 every node labelled nvidia.com/gpu.present=true, 1 GPU each
#   hack/fake-gpu.sh NODE [COUNT]    one node
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl
count="${2:-1}"
if [[ $# -ge 1 ]]; then
  nodes=("$1")
else
  mapfile -t nodes < <(kubectl get nodes -l nvidia.com/gpu.present=true -o name | sed 's|^node/||')
fi
for node in "${nodes[@]}"; do
  kubectl patch node "$node" --subresource=status --type=json -p \
    "[{\"op\":\"add\",\"path\":\"/status/capacity/nvidia.com~1gpu\",\"value\":\"$count\"},
      {\"op\":\"add\",\"path\":\"/status/allocatable/nvidia.com~1gpu\",\"value\":\"$count\"}]"
  echo "node $node: nvidia.com/gpu=$count"
done
