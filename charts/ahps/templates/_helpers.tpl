{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "ahps.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: "<release>-<chart>", or "<release>" when the release name already contains
the chart name. Truncated to 63 characters.
*/}}
{{- define "ahps.fullname" -}}
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

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "ahps.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "ahps.labels" -}}
helm.sh/chart: {{ include "ahps.chart" . }}
{{ include "ahps.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ahps
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "ahps.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ahps.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Component names and labels. */}}
{{- define "ahps.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "ahps.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ahps.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "ahps.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "ahps.mlflow.selectorLabels" -}}
{{ include "ahps.selectorLabels" . }}
app.kubernetes.io/component: mlflow
{{- end }}

{{- define "ahps.scheduler.selectorLabels" -}}
{{ include "ahps.selectorLabels" . }}
app.kubernetes.io/component: scheduler
{{- end }}

{{- define "ahps.mlflow.labels" -}}
{{ include "ahps.labels" . }}
app.kubernetes.io/component: mlflow
{{- end }}

{{- define "ahps.scheduler.labels" -}}
{{ include "ahps.labels" . }}
app.kubernetes.io/component: scheduler
{{- end }}

{{/* ServiceAccount names. */}}
{{- define "ahps.mlflow.serviceAccountName" -}}
{{- if .Values.mlflow.serviceAccount.create }}
{{- default (include "ahps.mlflow.fullname" .) .Values.mlflow.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.mlflow.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ahps.scheduler.serviceAccountName" -}}
{{- if .Values.scheduler.serviceAccount.create }}
{{- default (include "ahps.scheduler.fullname" .) .Values.scheduler.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.scheduler.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Images: "repository:tag", the tag defaulting to the chart's appVersion. */}}
{{- define "ahps.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "ahps.mlflow.image" -}}
{{- $repo := default .Values.image.repository .Values.mlflow.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.mlflow.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* In-cluster DNS name of the MLflow Service and the tracking URI built from it. */}}
{{- define "ahps.mlflow.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "ahps.mlflow.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "ahps.mlflow.trackingUri" -}}
{{- if .Values.scheduler.params.tracking_uri }}
{{- .Values.scheduler.params.tracking_uri }}
{{- else if .Values.mlflow.enabled }}
{{- printf "http://%s:%v" (include "ahps.mlflow.serviceHost" .) .Values.mlflow.service.port }}
{{- else }}
{{- fail "scheduler.params.tracking_uri is required when mlflow.enabled=false (there is no MLflow Service to point the pipeline at)" }}
{{- end }}
{{- end }}

{{/*
Host headers the MLflow server accepts: every in-cluster name of its Service (with and without a
port), localhost for kubectl port-forward, and mlflow.allowedHosts.
*/}}
{{- define "ahps.mlflow.allowedHosts" -}}
{{- $svc := include "ahps.mlflow.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $hosts := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (include "ahps.mlflow.serviceHost" .) "localhost" "127.0.0.1" }}
{{- $out := list }}
{{- range $hosts }}
{{- $out = append $out . }}
{{- $out = append $out (printf "%s:*" .) }}
{{- end }}
{{- concat $out .Values.mlflow.allowedHosts | join "," }}
{{- end }}

{{/* True ("true") when the server needs the PersistentVolumeClaim. */}}
{{- define "ahps.mlflow.usesVolume" -}}
{{- if or (eq .Values.mlflow.backendStore.type "sqlite") (not .Values.mlflow.artifacts.s3.enabled) }}true{{ end }}
{{- end }}

{{- define "ahps.mlflow.claimName" -}}
{{- default (include "ahps.mlflow.fullname" .) .Values.mlflow.persistence.existingClaim }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot express. Included by every template that depends on them,
so `helm template` fails with one clear message.
*/}}
{{- define "ahps.validate" -}}
{{- $m := .Values.mlflow }}
{{- if $m.enabled }}
{{- if and (eq $m.backendStore.type "sqlite") (gt (int $m.replicaCount) 1) }}
{{- fail (printf "mlflow.replicaCount=%v is not allowed with mlflow.backendStore.type=sqlite: SQLite on a PersistentVolumeClaim supports exactly 1 replica; use backendStore.type=postgresql for more" $m.replicaCount) }}
{{- end }}
{{- if and (not $m.artifacts.s3.enabled) (gt (int $m.replicaCount) 1) (not (has "ReadWriteMany" $m.persistence.accessModes)) }}
{{- fail (printf "mlflow.replicaCount=%v needs mlflow.artifacts.s3.enabled=true (or a ReadWriteMany volume): local artifacts live on a ReadWriteOnce PersistentVolumeClaim" $m.replicaCount) }}
{{- end }}
{{- if and (eq $m.backendStore.type "postgresql") (not $m.backendStore.postgresql.existingSecret) }}
{{- fail "mlflow.backendStore.postgresql.existingSecret is required when mlflow.backendStore.type=postgresql (a Secret whose key mlflow.backendStore.postgresql.uriKey holds the database URI)" }}
{{- end }}
{{- end }}
{{- if and .Values.scheduler.enabled (eq .Values.kfp.auth.type "secret") (not .Values.kfp.auth.existingSecret) }}
{{- fail "kfp.auth.existingSecret is required when kfp.auth.type=secret" }}
{{- end }}
{{- end }}

{{/* Writable scratch volumes for a read-only root filesystem. */}}
{{- define "ahps.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratchSizeLimit }}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.scratchSizeLimit }}
{{- end }}

{{- define "ahps.scratchVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /home/ahps/.cache
{{- end }}

{{/*
The pipeline parameters as a JSON object of strings: scheduler.params without empty strings (the
pipeline's default applies), maps and lists as JSON, and tracking_uri always resolved.
*/}}
{{- define "ahps.scheduler.params" -}}
{{- $out := dict }}
{{- range $name, $value := .Values.scheduler.params }}
{{- if not (and (kindIs "string" $value) (eq $value "")) }}
{{- $_ := set $out $name (include "ahps.paramValue" $value) }}
{{- end }}
{{- end }}
{{- $_ := set $out "tracking_uri" (include "ahps.mlflow.trackingUri" .) }}
{{- toJson $out }}
{{- end }}

{{/* Environment variable name of a pipeline parameter: AHPS_PARAM_<NAME>. */}}
{{- define "ahps.paramEnvName" -}}
{{- printf "AHPS_PARAM_%s" (. | upper) }}
{{- end }}

{{/* A pipeline parameter value as a string: scalars as they are, maps and lists as JSON. */}}
{{- define "ahps.paramValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}
