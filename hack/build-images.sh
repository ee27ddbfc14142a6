#!/usr/bin/env bash
# Build the operator and worker images (CPU torch; WORKER_BUILD_ARGS="--build-arg TORCH_VARIANT=cu124" for CUDA)
# and load them into the kind cluster.
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind
read -r -a worker_args <<<"${WORKER_BUILD_ARGS:-}"
docker build -f "$REPO/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$REPO"
docker build -f "$REPO/worker_image/Dockerfile" "${worker_args[@]}" -t "$WORKER_IMAGE" "$REPO"
kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$WORKER_IMAGE"
