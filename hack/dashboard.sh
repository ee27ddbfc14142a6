#!/usr/bin/env bash
# Install Prometheus + Grafana (kube-prometheus-stack, its Grafana sidecar loads our dashboard ConfigMap), switch on
# the chart's ServiceMonitor and PrometheusRule, and open Grafana on http://localhost:3000 (admin / prom-operator).
# shellcheck source=hack/lib.sh
source "$(dirname "$0")/lib.sh"
need helm kubectl
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
helm repo update prometheus-community >/dev/null
helm upgrade --install monitoring prometheus-community/kube-prometheus-stack --namespace monitoring \
  --create-namespace --wait --timeout 10m \
  --set grafana.sidecar.dashboards.enabled=true --set grafana.sidecar.dashboards.searchNamespace=ALL \
  --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
  --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false
"$REPO/hack/install-chart.sh" --reuse-values \
  --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true
echo "Grafana: http://localhost:3000/d/fedtask-overview (admin / prom-operator); Ctrl-C to stop"
kubectl -n monitoring port-forward svc/monitoring-grafana 3000:80
