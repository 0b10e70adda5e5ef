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
{{- with include "ahps.mlflow.ingressHost" . }}
{{- $out = concat $out (list . (printf "%s:*" .)) }}
{{- end }}
{{- concat $out .Values.mlflow.allowedHosts | uniq | join "," }}
{{- end }}

{{/* The Ingress host when the Ingress is on, else nothing. */}}
{{- define "ahps.mlflow.ingressHost" -}}
{{- if .Values.mlflow.ingress.enabled }}{{ .Values.mlflow.ingress.host }}{{ end }}
{{- end }}

{{/*
Origins allowed to send state-changing requests: mlflow.corsAllowedOrigins and the Ingress host's
origin (https with a TLS Secret; http and https without, as TLS may end before the Ingress).
*/}}
{{- define "ahps.mlflow.corsAllowedOrigins" -}}
{{- $out := .Values.mlflow.corsAllowedOrigins }}
{{- with include "ahps.mlflow.ingressHost" . }}
{{- $out = append $out (printf "https://%s" .) }}
{{- if not $.Values.mlflow.ingress.tls.secretName }}
{{- $out = append $out (printf "http://%s" .) }}
{{- end }}
{{- end }}
{{- $out | uniq | join "," }}
{{- end }}

{{/*
Backend-store URI of an external PostgreSQL given by parts. It carries no password: libpq reads it
from PGPASSWORD, which the Deployment fills from mlflow.backendStore.postgresql.passwordSecret.
Argument: a dict with "root" (the chart context) and "database".
*/}}
{{- define "ahps.mlflow.postgresqlUri" -}}
{{- $pg := .root.Values.mlflow.backendStore.postgresql }}
{{- printf "postgresql://%s@%s:%v/%s?sslmode=%s" $pg.user $pg.host $pg.port .database $pg.sslmode }}
{{- end }}

{{/* Database of MLflow's auth tables (mlflow server --app-name basic-auth): a URI without password. */}}
{{- define "ahps.mlflow.authDatabaseUri" -}}
{{- $m := .Values.mlflow }}
{{- if eq $m.backendStore.type "sqlite" }}
{{- printf "sqlite:///%s/basic_auth.db" $m.persistence.mountPath }}
{{- else }}
{{- include "ahps.mlflow.postgresqlUri" (dict "root" . "database" (default $m.backendStore.postgresql.database $m.auth.database)) }}
{{- end }}
{{- end }}

{{/*
Hosts (host:port) pipeline pods may send MLflow credentials to: security.allowedTrackingHosts, or by
default every in-cluster name of this release's MLflow Service and the host of
scheduler.params.tracking_uri (its port, or the scheme's default port).
*/}}
{{- define "ahps.policy.allowedTrackingHosts" -}}
{{- $hosts := .Values.security.allowedTrackingHosts }}
{{- if not $hosts }}
{{- $hosts = list }}
{{- if .Values.mlflow.enabled }}
{{- $svc := include "ahps.mlflow.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $port := .Values.mlflow.service.port }}
{{- range list (include "ahps.mlflow.serviceHost" .) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s" $svc $ns) $svc }}
{{- $hosts = append $hosts (printf "%s:%v" . $port) }}
{{- end }}
{{- end }}
{{- with .Values.scheduler.params.tracking_uri }}
{{- $u := urlParse . }}
{{- $host := $u.host }}
{{- if not (regexMatch ":[0-9]+$" $host) }}
{{- $host = printf "%s:%s" $host (ternary "443" "80" (eq $u.scheme "https")) }}
{{- end }}
{{- $hosts = append $hosts $host }}
{{- end }}
{{- end }}
{{- $hosts | uniq | join "," }}
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
{{- $pg := $m.backendStore.postgresql }}
{{- if eq $m.backendStore.type "postgresql" }}
{{- if and $pg.host $pg.uriSecret.name }}
{{- fail "mlflow.backendStore.postgresql: set either host (with port, database, user, sslmode and passwordSecret) or uriSecret.name, not both" }}
{{- end }}
{{- if not (or $pg.host $pg.uriSecret.name) }}
{{- fail "mlflow.backendStore.type=postgresql needs mlflow.backendStore.postgresql.host (with port, database, user, sslmode and passwordSecret.name: a Secret holding the password) or mlflow.backendStore.postgresql.uriSecret.name (a Secret holding the whole URI)" }}
{{- end }}
{{- if and $pg.host (not $pg.passwordSecret.name) }}
{{- fail "mlflow.backendStore.postgresql.passwordSecret.name is required with mlflow.backendStore.postgresql.host: the name of an existing Secret whose key passwordSecret.key holds the database password" }}
{{- end }}
{{- end }}
{{- if $m.auth.enabled }}
{{- if not $m.auth.existingSecret }}
{{- fail "mlflow.auth.existingSecret is required when mlflow.auth.enabled=true: an existing Secret with the admin password (key mlflow.auth.adminPasswordKey) and the Flask secret key (key mlflow.auth.flaskSecretKeyKey)" }}
{{- end }}
{{- if and (eq $m.backendStore.type "postgresql") (not $pg.host) }}
{{- fail "mlflow.auth.enabled=true with mlflow.backendStore.postgresql.uriSecret: the auth database URI would have to carry the password; give the database by parts (mlflow.backendStore.postgresql.host, user, passwordSecret) instead" }}
{{- end }}
{{- end }}
{{- if and $m.ingress.enabled (not $m.ingress.host) }}
{{- fail "mlflow.ingress.host is required when mlflow.ingress.enabled=true (the host name of the MLflow UI, e.g. mlflow.example.com)" }}
{{- end }}
{{- $eg := .Values.networkPolicy.mlflow.egress }}
{{- if and .Values.networkPolicy.enabled $eg.enabled }}
{{- if and (eq $m.backendStore.type "postgresql") (not $eg.databaseTo) }}
{{- fail "networkPolicy.mlflow.egress.databaseTo is empty but mlflow.backendStore.type=postgresql: the server could not reach its database; list the database's peers (namespaceSelector/podSelector or an ipBlock) or set networkPolicy.mlflow.egress.enabled=false" }}
{{- end }}
{{- if and $m.artifacts.s3.enabled (not $eg.s3To) }}
{{- fail "networkPolicy.mlflow.egress.s3To is empty but mlflow.artifacts.s3.enabled=true: the server could not reach the S3 endpoint; list its peers (namespaceSelector/podSelector or an ipBlock) or set networkPolicy.mlflow.egress.enabled=false" }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.scheduler.enabled }}
{{- if and (eq .Values.kfp.auth.type "secret") (not .Values.kfp.auth.existingSecret) }}
{{- fail "kfp.auth.existingSecret is required when kfp.auth.type=secret" }}
{{- end }}
{{- include "ahps.scheduler.validate" . }}
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
The pipeline parameters as a JSON object of strings (one ConfigMap key, hence one file under
/etc/ahps/params, each): maps and lists as JSON, empty strings kept (an empty file leaves the
pipeline's default, and the key shows where to fill it in), tracking_uri always resolved.
*/}}
{{- define "ahps.scheduler.params" -}}
{{- $out := dict }}
{{- range $name, $value := .Values.scheduler.params }}
{{- $_ := set $out $name (include "ahps.paramValue" $value) }}
{{- end }}
{{- $_ := set $out "tracking_uri" (include "ahps.mlflow.trackingUri" .) }}
{{- toJson $out }}
{{- end }}

{{/* A pipeline parameter value as a string: scalars as they are, maps and lists as JSON. */}}
{{- define "ahps.paramValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}
