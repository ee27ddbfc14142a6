{{/* Names */}}
{{- define "fedtask.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedtask.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fedtask.minioName" -}}
{{- printf "%s-minio" (include "fedtask.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fedtask.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fedtask.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels */}}
{{- define "fedtask.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedtask
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "fedtask.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedtask.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "fedtask.minioSelectorLabels" -}}
app.kubernetes.io/name: {{ include "fedtask.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: store
{{- end }}

{{/* Namespaces whose FederatedTasks the operator handles; empty list means all namespaces. */}}
{{- define "fedtask.watchNamespaces" -}}
{{- $namespaces := .Values.operator.watchNamespaces }}
{{- if and (not $namespaces) (eq .Values.rbac.scope "namespace") }}
{{- $namespaces = list .Release.Namespace }}
{{- end }}
{{- toJson $namespaces }}
{{- end }}

{{/* Store settings */}}
{{- define "fedtask.storeEndpoint" -}}
{{- if .Values.storage.endpoint }}
{{- .Values.storage.endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "%s.%s.svc:%d" (include "fedtask.minioName" .) .Release.Namespace (int .Values.minio.service.port) }}
{{- end }}
{{- end }}

{{/* The store's credentials Secret: storage.existingSecret (storage.credentialsSecret is its deprecated name), else
the in-chart MinIO's */}}
{{- define "fedtask.storeSecret" -}}
{{- $storage := .Values.storage }}
{{- if and $storage.existingSecret $storage.credentialsSecret (ne $storage.existingSecret $storage.credentialsSecret) }}
{{- fail "storage.credentialsSecret is the deprecated name of storage.existingSecret: set only storage.existingSecret" }}
{{- end }}
{{- $existing := $storage.existingSecret | default $storage.credentialsSecret }}
{{- if and $existing .Values.minio.enabled (not $storage.endpoint) }}
{{- fail "storage.existingSecret names an external store's credentials: for the in-chart MinIO (minio.enabled without storage.endpoint) set minio.existingSecret instead (a Secret with MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, read by MinIO and the operator)" }}
{{- end }}
{{- if $existing }}
{{- $existing }}
{{- else if .Values.minio.enabled }}
{{- include "fedtask.minioSecret" . }}
{{- end }}
{{- end }}

{{/* The in-chart MinIO's credentials: minio.existingSecret, else the Secret the chart generates */}}
{{- define "fedtask.minioSecret" -}}
{{- .Values.minio.existingSecret | default (include "fedtask.minioName" .) }}
{{- end }}

{{- define "fedtask.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The worker image of task pods without spec.image: operator.workerImage, else the worker of the chart's
appVersion (the same default as the operator's --image) */}}
{{- define "fedtask.workerImage" -}}
{{- .Values.operator.workerImage | default (printf "ghcr.io/fedtask/worker:%s" .Chart.AppVersion) }}
{{- end }}

{{/* NetworkPolicy egress rules shared by the operator and task pods */}}
{{- define "fedtask.egressDNS" }}
- to:
    - namespaceSelector: {}
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}
{{- define "fedtask.egressStore" }}
{{- if and .Values.minio.enabled (not .Values.storage.endpoint) }}
- to:
    - podSelector:
        matchLabels:
          {{- include "fedtask.minioSelectorLabels" . | nindent 10 }}
  ports:
    - {port: 9000, protocol: TCP}
{{- else }}
- to:
    {{- range .Values.networkPolicy.store.cidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  ports:
    {{- range .Values.networkPolicy.store.ports }}
    - {port: {{ . }}, protocol: TCP}
    {{- end }}
{{- end }}
{{- end }}

