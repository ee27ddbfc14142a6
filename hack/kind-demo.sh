#!/usr/bin/env bash
# Zero to a running task on kind: cluster, images, chart with MinIO, example task. Then: hack/dashboard.sh
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
"$REPO/hack/kind-up.sh"
"$REPO/hack/build-images.sh"
"$REPO/hack/install-chart.sh"
"$REPO/hack/run-example.sh" "$@"
