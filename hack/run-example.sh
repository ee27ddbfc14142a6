#!/usr/bin/env bash
# Apply an example FederatedTask in the release namespace (where the store Secret is) and watch it.
#   hack/run-example.sh [examples/digits-quick.yaml]
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl
manifest="${1:-$REPO/examples/digits-quick.yaml}"
kubectl -n "$NAMESPACE" apply -f "$manifest"
echo "watching (Ctrl-C stops watching, not the task):"
kubectl -n "$NAMESPACE" get federatedtasks --watch
