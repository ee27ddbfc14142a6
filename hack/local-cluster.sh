#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, without Docker: etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager (built from source by hack/install-cluster-tools.sh), a MinIO server, and one node agent
# (`fedtask node-agent`: pods run as local processes) per node.
#
#   hack/local-cluster.sh up [--nodes FILE] [--dir DIR]   start everything, register the nodes, wait until all are Ready
#   hack/local-cluster.sh install [--dir DIR] [HELM ARGS]  helm upgrade --install the chart into namespace fedtask
#   hack/local-cluster.sh status [--dir DIR]               what runs
#   hack/local-cluster.sh down [--dir DIR]                 stop everything `up` started (pods included)
#
# DIR (default .local-cluster/) holds everything: certificates and kubeconfigs, etcd's and MinIO's data, logs/ and
# pids/ of every process, nodes/NAME/ (a node agent's pods: logs, volumes, exit codes) and `env`, to source:
# PATH gets kubectl, helm and the built binaries, KUBECONFIG a cluster-admin kubeconfig, FEDTASK_MINIO_* the MinIO
# server `up` started. Every port is a free one chosen at `up` (DIR/ports).
#
# FILE is a `kubectl get nodes -o yaml` List (the format of `fedtask run --nodes`); default: node-1 and node-2 (CPU)
# and gpu-1 (nvidia.com/gpu: 1, a fake GPU), all labelled fedtask.io/device=true, each offering this machine's cores
# and memory.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1  # the `kubernetes` Service's ClusterIP, in the apiserver certificate
NAMESPACE=fedtask
RELEASE=fedtask

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
log() { echo "local-cluster: $*" >&2; }
die() { echo "local-cluster: $*" >&2; exit 1; }

command="${1:-}"
[[ -n "$command" ]] || usage
[[ "$command" == -h || "$command" == --help ]] && usage 0
shift
DIR="$ROOT/.local-cluster"
NODES_FILE=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --dir=*) DIR="${1#--dir=}"; shift ;;
    --nodes) NODES_FILE="$2"; shift 2 ;;
    --nodes=*) NODES_FILE="${1#--nodes=}"; shift ;;
    -h|--help) usage 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
if [[ ${#EXTRA[@]} -gt 0 && "$command" != install ]]; then
  die "$command: unknown arguments: ${EXTRA[*]} (only install passes extra arguments on, to helm)"
fi
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
MARKER="$DIR/.fedtask-local-cluster"

# ------------------------------------------------------------------------------------------------------- processes
alive() {  # NAME: its recorded process is running
  local pid
  [[ -f "$DIR/pids/$1" ]] || return 1
  pid="$(cat "$DIR/pids/$1")"
  [[ -n "$pid" && -d "/proc/$pid" ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

start() {  # NAME COMMAND...: run in the background, in its own session, output to logs/NAME.log
  local name="$1"
  shift
  setsid "$@" >"$DIR/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/pids/$name"
}

stop() {  # NAME: SIGTERM, then SIGKILL after 10 s
  local name="$1" pid target i
  alive "$name" || { rm -f "$DIR/pids/$name"; return 0; }
  pid="$(cat "$DIR/pids/$name")"
  target="$pid"
  if [[ "$name" == node-* ]]; then
    # `unshare --fork` ignores SIGTERM: it goes to the agent, PID 1 of the namespace (its end ends the namespace).
    target="$(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true)"
    target="${target%% *}"
    [[ -n "$target" ]] || target="$pid"
  fi
  kill -TERM "$target" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$name" || break
    sleep 0.1
  done
  if alive "$name"; then
    log "$name ($pid) ignored SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$DIR/pids/$name"
}

wait_until() {  # SECONDS WHAT COMMAND...: retry COMMAND until it succeeds
  local seconds="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "$what not ready after ${seconds}s (logs in $DIR/logs/)"
    fi
    sleep 0.2
  done
}

running_names() {
  local file
  for file in "$DIR"/pids/*; do
    [[ -e "$file" ]] || continue
    alive "$(basename "$file")" && basename "$file"
  done
  return 0
}

# --------------------------------------------------------------------------------------------------- certificates
sign() {  # NAME SUBJECT EXTENSIONS: a key and a certificate signed by the cluster CA
  local name="$1" subject="$2" extensions="$3" pki="$DIR/pki"
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  printf '%s\n' "$extensions" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 \
    -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

client_cert() {  # NAME USER [GROUP]
  local subject="/CN=$2"
  [[ -n "${3:-}" ]] && subject="/O=$3/CN=$2"
  sign "$1" "$subject" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
}

kubeconfig() {  # FILE CERT-NAME: a kubeconfig with that client certificate
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $DIR/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $DIR/pki/$2.crt
    client-key: $DIR/pki/$2.key
contexts:
- name: local
  context: {cluster: local, user: $2}
current-context: local
EOF
}

default_nodes() {  # the default fleet, in `kubectl get nodes -o yaml` form
  local cpus memory
  cpus="$(nproc)"
  memory="$(awk '/^MemTotal:/ {print $2 "Ki"}' /proc/meminfo)"
  cat <<EOF
# Written by hack/local-cluster.sh: two CPU device nodes and one with a fake GPU (no GPU is used: pods run on the CPU).
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: node-1
    labels: {fedtask.io/device: "true"}
  status:
    capacity: {cpu: "$cpus", memory: $memory, pods: "110"}
    allocatable: {cpu: "$cpus", memory: $memory, pods: "110"}
- apiVersion: v1
  kind: Node
  metadata:
    name: node-2
    labels: {fedtask.io/device: "true"}
  status:
    capacity: {cpu: "$cpus", memory: $memory, pods: "110"}
    allocatable: {cpu: "$cpus", memory: $memory, pods: "110"}
- apiVersion: v1
  kind: Node
  metadata:
    name: gpu-1
    labels: {fedtask.io/device: "true", nvidia.com/gpu.present: "true", nvidia.com/gpu.product: Fake-GPU}
  status:
    capacity: {cpu: "$cpus", memory: $memory, pods: "110", nvidia.com/gpu: "1"}
    allocatable: {cpu: "$cpus", memory: $memory, pods: "110", nvidia.com/gpu: "1"}
EOF
}

node_names() {  # FILE: the node names, validated as `fedtask run --nodes` validates them
  "$PYTHON" -c '
import sys
from fedtask_operator.core.documents import DocumentError
from fedtask_operator.local.nodes import load_nodes
try:
    print("\n".join(node["metadata"]["name"] for node in load_nodes(sys.argv[1])))
except DocumentError as err:
    sys.exit(f"local-cluster: {err}")
' "$1"
}

machine_ip() {  # the node agents' --node-ip (pods' and nodes' address) and the API server's advertised address
  "$PYTHON" -c 'from fedtask_operator.agent.cli import machine_ip; print(machine_ip())'
}

free_ports() {  # COUNT: that many distinct free TCP ports on 127.0.0.1
  "$PYTHON" -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
' "$1"
}

node_ready() {  # NAME: Ready, and the node lifecycle controller has lifted its not-ready taint
  local out
  out="$(kubectl get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}')"
  [[ "$out" == True* && "$out" != *node.kubernetes.io/not-ready* ]]
}

# ---------------------------------------------------------------------------------------------------------- up
cmd_up() {
  local started=$SECONDS bin name names
  if [[ -n "$(running_names)" ]]; then
    die "a cluster is already up in $DIR ($(running_names | tr '\n' ' ')); run: $0 down --dir $DIR"
  fi
  if [[ -n "$(ls -A "$DIR")" && ! -f "$MARKER" ]]; then
    die "$DIR is not empty and was not made by this script: choose another --dir"
  fi
  [[ -x "$PYTHON" ]] || die "no $PYTHON: run make venv first"
  bin="$("$ROOT/hack/install-cluster-tools.sh")"
  "$ROOT/hack/install-test-tools.sh" >/dev/null
  command -v openssl >/dev/null || die "openssl is required"
  command -v unshare >/dev/null || die "unshare (util-linux) is required"
  [[ "$(id -u)" -eq 0 ]] || die "the node agents need root (PID and mount namespaces, bind mounts)"

  # A fresh cluster every time: the previous one's state goes.
  find "$DIR" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
  touch "$MARKER"
  mkdir -p "$DIR"/{bin,pki,logs,pids,etcd,minio,nodes,volumes}
  chmod 700 "$DIR/etcd" "$DIR/pki"
  for name in kube-apiserver kube-scheduler kube-controller-manager kubectl etcd minio; do
    ln -sf "$bin/$name" "$DIR/bin/$name"
  done
  ln -sf "$ROOT/.tools/bin/helm3" "$DIR/bin/helm"
  export PATH="$DIR/bin:$PATH"
  export KUBECONFIG="$DIR/admin.kubeconfig"

  if [[ -n "$NODES_FILE" ]]; then
    [[ -f "$NODES_FILE" ]] || die "no nodes file $NODES_FILE"
    cp "$NODES_FILE" "$DIR/nodes.yaml"
  else
    default_nodes >"$DIR/nodes.yaml"
  fi
  names="$(node_names "$DIR/nodes.yaml")"
  NODE_IP="$(machine_ip)"

  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT SCHEDULER_PORT CONTROLLER_PORT MINIO_PORT MINIO_CONSOLE_PORT \
    <<<"$(free_ports 7)"
  cat >"$DIR/ports" <<EOF
etcd=$ETCD_PORT
etcd-peer=$ETCD_PEER_PORT
kube-apiserver=$APISERVER_PORT
kube-scheduler=$SCHEDULER_PORT
kube-controller-manager=$CONTROLLER_PORT
minio=$MINIO_PORT
minio-console=$MINIO_CONSOLE_PORT
EOF

  log "certificates"
  local pki="$DIR/pki"
  openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=fedtask-local-cluster-ca" -days 3650 -sha256 \
    -out "$pki/ca.crt" 2>/dev/null
  sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  openssl genrsa -out "$pki/service-account.key" 2048 2>/dev/null
  openssl rsa -in "$pki/service-account.key" -pubout -out "$pki/service-account.pub" 2>/dev/null
  client_cert admin admin system:masters
  client_cert scheduler system:kube-scheduler
  client_cert controller-manager system:kube-controller-manager
  kubeconfig "$DIR/admin.kubeconfig" admin
  kubeconfig "$DIR/scheduler.kubeconfig" scheduler
  kubeconfig "$DIR/controller-manager.kubeconfig" controller-manager
  for name in $names; do
    client_cert "node-$name" "system:node:$name" system:nodes
    mkdir -p "$DIR/nodes/$name"
    kubeconfig "$DIR/nodes/$name/kubeconfig" "node-$name"
  done

  log "etcd on 127.0.0.1:$ETCD_PORT"
  start etcd etcd --name local --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn
  wait_until 60 etcd curl -fs "http://127.0.0.1:$ETCD_PORT/health"

  log "kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
  start kube-apiserver kube-apiserver \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address "$NODE_IP" --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --requestheader-client-ca-file "$pki/ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/service-account.pub" \
    --service-account-signing-key-file "$pki/service-account.key" \
    --api-audiences https://kubernetes.default.svc \
    --allow-privileged=true \
    --profiling=false
  wait_until 120 kube-apiserver kubectl get --raw /readyz

  log "kube-controller-manager, kube-scheduler"
  start kube-controller-manager kube-controller-manager \
    --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$CONTROLLER_PORT" \
    --leader-elect=false --use-service-account-credentials \
    --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/service-account.key" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --allocate-node-cidrs=false \
    --profiling=false
  start kube-scheduler kube-scheduler \
    --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" --leader-elect=false --profiling=false

  log "minio on 127.0.0.1:$MINIO_PORT"
  MINIO_ROOT_USER="fedtask-local"
  MINIO_ROOT_PASSWORD="$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)"
  MINIO_ROOT_USER="$MINIO_ROOT_USER" MINIO_ROOT_PASSWORD="$MINIO_ROOT_PASSWORD" MINIO_BROWSER=off \
    start minio minio server "$DIR/minio" --address "127.0.0.1:$MINIO_PORT" \
    --console-address "127.0.0.1:$MINIO_CONSOLE_PORT"

  cat >"$DIR/env" <<EOF
# Source this file: kubectl, helm and the cluster's binaries on PATH; the cluster-admin kubeconfig.
export PATH="$DIR/bin:\$PATH"
export KUBECONFIG="$DIR/admin.kubeconfig"
export FEDTASK_LOCAL_CLUSTER="$DIR"
export FEDTASK_MINIO_ENDPOINT="127.0.0.1:$MINIO_PORT"
export FEDTASK_MINIO_ACCESS_KEY="$MINIO_ROOT_USER"
export FEDTASK_MINIO_SECRET_KEY="$MINIO_ROOT_PASSWORD"
EOF

  wait_until 60 "the service account controller" kubectl -n default get serviceaccount default
  log "node agents: $(echo "$names" | tr '\n' ' ')"
  for name in $names; do
    start "node-$name" "$PYTHON" -m fedtask_operator.agent.cli --isolate \
      --kubeconfig "$DIR/nodes/$name/kubeconfig" --nodes "$DIR/nodes.yaml" --node "$name" \
      --root "$DIR/nodes/$name" --hosts-file "$DIR/nodes/$name/hosts" --node-ip "$NODE_IP" \
      --image-dockerfile "fedtask-operator=$ROOT/operator/Dockerfile" \
      --image-dockerfile "fedtask-worker=$ROOT/worker_image/Dockerfile" \
      --image-dockerfile "ghcr.io/fedtask/operator=$ROOT/operator/Dockerfile" \
      --image-dockerfile "ghcr.io/fedtask/worker=$ROOT/worker_image/Dockerfile" \
      --image-entrypoint "quay.io/minio/minio=$bin/minio"
  done
  wait_until 60 minio curl -fs "http://127.0.0.1:$MINIO_PORT/minio/health/ready"
  for name in $names; do
    wait_until 120 "node $name" node_ready "$name"
  done
  log "up in $((SECONDS - started)) s: source $DIR/env"
  kubectl get nodes -o wide >&2
}

# ----------------------------------------------------------------------------------------------------- install
cmd_install() {
  [[ -f "$DIR/env" ]] || die "no cluster in $DIR: run $0 up first"
  # shellcheck source=/dev/null
  source "$DIR/env"
  local started=$SECONDS metrics_port health_port
  [[ -n "$(running_names)" ]] || die "the cluster in $DIR is down: run $0 up"
  # The chart's MinIO keeps its data on a claim: a hostPath PersistentVolume reserved for it (no provisioner here).
  mkdir -p "$DIR/volumes/minio"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $RELEASE-minio-local
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: $NAMESPACE, name: $RELEASE-minio}
  hostPath: {path: $DIR/volumes/minio, type: DirectoryOrCreate}
EOF
  # Every pod shares this machine's network: one operator replica, its ports chosen free. The chart's MinIO listens
  # on :9000 (fixed in the chart), so one installed cluster per machine at a time.
  if (exec 3<>/dev/tcp/127.0.0.1/9000) 2>/dev/null && ! kubectl -n "$NAMESPACE" get deployment "$RELEASE-minio" \
    >/dev/null 2>&1; then
    die "port 9000 is taken (another cluster's MinIO?): the chart's MinIO pod needs it on this machine's network"
  fi
  read -r metrics_port health_port <<<"$(free_ports 2)"
  log "helm upgrade --install $RELEASE helm/fedtask -n $NAMESPACE"
  helm upgrade --install "$RELEASE" "$ROOT/helm/fedtask" -n "$NAMESPACE" --create-namespace \
    --set minio.enabled=true --set replicaCount=1 \
    --set metrics.port="$metrics_port" --set operator.healthPort="$health_port" \
    --wait --timeout 5m ${EXTRA[@]+"${EXTRA[@]}"} >&2
  kubectl -n "$NAMESPACE" rollout status deployment -l app.kubernetes.io/instance="$RELEASE" --timeout 120s >&2
  log "installed in $((SECONDS - started)) s"
}

# --------------------------------------------------------------------------------------------------------- down
cmd_down() {
  local name pids
  [[ -d "$DIR/pids" ]] || { log "nothing runs from $DIR"; return 0; }
  # Node agents first: each is PID 1 of its own PID namespace, so its pods' processes end with it.
  for name in $(running_names | grep '^node-' || true); do
    stop "$name"
  done
  for name in kube-scheduler kube-controller-manager kube-apiserver minio etcd; do
    stop "$name"
  done
  pids="$(running_names)"
  [[ -z "$pids" ]] || die "still running: $pids"
  log "down: nothing of $DIR runs"
}

cmd_status() {
  local name
  for name in $(running_names); do
    echo "$name $(cat "$DIR/pids/$name")"
  done
  if [[ -f "$DIR/env" ]] && alive kube-apiserver; then
    # shellcheck source=/dev/null
    source "$DIR/env"
    kubectl get nodes
  fi
}

case "$command" in
  up) cmd_up ;;
  install) cmd_install ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) usage ;;
esac
