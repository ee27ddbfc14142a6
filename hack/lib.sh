# Settings shared by the hack/ scripts (sourced, not run). Override any of them in the environment.
# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this file
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${CLUSTER:-fedtask}"
NAMESPACE="${NAMESPACE:-fedtask}"
RELEASE="${RELEASE:-fedtask}"
VERSION="${VERSION:-0.1.0}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-fedtask-operator:$VERSION}"
WORKER_IMAGE="${WORKER_IMAGE:-fedtask-worker:$VERSION}"
export KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}"

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is required (see README: Try it on kind)" >&2; exit 1; }
  done
}
