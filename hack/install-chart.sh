#!/usr/bin/env bash
# Install (or upgrade) the chart with the in-chart MinIO and the images built by hack/build-images.sh.
# Extra arguments go to helm, e.g. hack/install-chart.sh --set metrics.serviceMonitor.enabled=true
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
need helm kubectl
helm upgrade --install "$RELEASE" "$REPO/helm/fedtask" --namespace "$NAMESPACE" --create-namespace \
  --set minio.enabled=true \
  --set image.repository="${OPERATOR_IMAGE%:*}" --set image.tag="${OPERATOR_IMAGE##*:}" \
  --set operator.workerImage="$WORKER_IMAGE" --set operator.workerImagePullPolicy=IfNotPresent \
  --wait --timeout 5m "$@"
kubectl -n "$NAMESPACE" get pods
