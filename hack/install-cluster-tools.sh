#!/usr/bin/env bash
# Builds the real control plane and object store that tests/cluster and hack/local-cluster.sh run, from their Go
# source modules (never a downloaded release binary):
#   kube-apiserver, kube-scheduler, kube-controller-manager, kubectl   k8s.io/kubernetes  (hack/cluster-tools/kubernetes)
#   etcd                                                               go.etcd.io/etcd/server/v3 (hack/cluster-tools/etcd)
#   minio                                                              github.com/minio/minio
# into a cache outside the repo, ${FEDTASK_CLUSTER_TOOLS:-~/.cache/fedtask/cluster-tools}/<versions>/bin, and prints
# that folder. Binaries already built for these versions are reused; a cold build takes about 20 minutes on two
# cores (most of it kube-apiserver), a warm call well under a second.
#   hack/install-cluster-tools.sh            build what is missing, print the bin folder
#   hack/install-cluster-tools.sh --check    exit 1 when something is missing (builds nothing)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KUBERNETES_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c  # the module proxy's @latest of github.com/minio/minio
CACHE="${FEDTASK_CLUSTER_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/fedtask/cluster-tools}"
BIN="$CACHE/k8s-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-minio-${MINIO_VERSION##*-}/bin"
TOOLS=(kube-apiserver kube-scheduler kube-controller-manager kubectl etcd minio)

missing=()
for tool in "${TOOLS[@]}"; do
  [[ -x "$BIN/$tool" ]] || missing+=("$tool")
done
if [[ "${1:-}" == "--check" ]]; then
  [[ ${#missing[@]} -eq 0 ]] || { echo "missing in $BIN: ${missing[*]}" >&2; exit 1; }
  echo "$BIN"
  exit 0
fi
[[ ${#missing[@]} -eq 0 ]] && { echo "$BIN"; exit 0; }

command -v go >/dev/null || { echo "install-cluster-tools: needs Go (1.24 or newer) on PATH" >&2; exit 1; }
mkdir -p "$BIN"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly
started=$(date +%s)
log() { echo "install-cluster-tools: $* ($(( $(date +%s) - started )) s)" >&2; }

# The Kubernetes binaries report the release they were built from: helm checks the chart's kubeVersion against it,
# and the API server derives its feature-gate and emulation version from it.
minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
version_flags=""
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $package.gitVersion=$KUBERNETES_VERSION -X $package.gitMajor=1 -X $package.gitMinor=$minor"
  version_flags+=" -X $package.gitTreeState=clean -X $package.buildDate=1970-01-01T00:00:00Z"
done

kube_tools=()
for tool in kube-apiserver kube-scheduler kube-controller-manager kubectl; do
  [[ -x "$BIN/$tool" ]] || kube_tools+=("k8s.io/kubernetes/cmd/$tool")
done
if [[ ${#kube_tools[@]} -gt 0 ]]; then
  log "building ${kube_tools[*]##*/} $KUBERNETES_VERSION"
  (cd "$ROOT/hack/cluster-tools/kubernetes" &&
    go build -trimpath -ldflags="-s -w $version_flags" -o "$BIN/" "${kube_tools[@]}")
fi
if [[ ! -x "$BIN/etcd" ]]; then
  log "building etcd $ETCD_VERSION"
  (cd "$ROOT/hack/cluster-tools/etcd" && go build -trimpath -ldflags="-s -w" -o "$BIN/etcd" .)
fi
if [[ ! -x "$BIN/minio" ]]; then
  log "building minio $MINIO_VERSION"
  # `go install module@version` builds outside any module of ours, with MinIO's own go.mod and go.sum.
  GOFLAGS='' GOBIN="$BIN" go install -trimpath -ldflags="-s -w" "github.com/minio/minio@$MINIO_VERSION"
fi
log "done: $BIN"
echo "$BIN"
