{{/*
The scheduler's command line. Parameters come from the ConfigMap through env vars and are expanded
by the kubelet ($(AHPS_PARAM_X)), so editing the ConfigMap changes the next run without an upgrade.
*/}}
{{- define "ahps.scheduler.args" -}}
{{- $s := .Values.scheduler }}
{{- $args := list "submit" $s.pipeline }}
{{- if eq $s.mode "recurringRun" }}
{{- /* --replace: `ahps schedule` keeps an existing recurring run of this name unless told to replace it,
       so without it a `helm upgrade` would never update the schedule or the parameters. */}}
{{- $args = list "schedule" $s.pipeline "--cron" $s.schedule "--name" $s.recurringRunName "--replace" }}
{{- end }}
{{- $args = concat $args (list "--host" .Values.kfp.host "--experiment" $s.experiment) }}
{{- range $name, $_ := include "ahps.scheduler.params" . | fromJson }}
{{- $args = concat $args (list "--param" (printf "%s=$(%s)" $name (include "ahps.paramEnvName" $name))) }}
{{- end }}
{{- toYaml (concat $args $s.extraArgs) }}
{{- end }}

{{/* Pod template spec shared by the CronJob and the recurring-run hook Job. */}}
{{- define "ahps.scheduler.podSpec" -}}
{{- $s := .Values.scheduler }}
{{- $auth := .Values.kfp.auth -}}
serviceAccountName: {{ include "ahps.scheduler.serviceAccountName" . }}
automountServiceAccountToken: false
restartPolicy: Never
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
containers:
  - name: scheduler
    image: {{ include "ahps.image" . | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    command: ["ahps"]
    args:
      {{- include "ahps.scheduler.args" . | nindent 6 }}
    env:
      - name: MLFLOW_DISABLE_TELEMETRY
        value: "true"
      # The KFP namespace of the runs in multi-user mode (the API token is not mounted to read it).
      - name: POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
      {{- if ne $auth.type "none" }}
      # kfp.Client's bearer token file (kfp.client.KF_PIPELINES_SA_TOKEN_ENV).
      - name: KF_PIPELINES_SA_TOKEN_PATH
        value: /var/run/secrets/kfp/token
      {{- end }}
      {{- range $name, $_ := include "ahps.scheduler.params" . | fromJson }}
      - name: {{ include "ahps.paramEnvName" $name }}
        valueFrom:
          configMapKeyRef:
            name: {{ include "ahps.scheduler.fullname" $ }}
            key: {{ $name }}
      {{- end }}
      {{- with $s.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    resources:
      {{- toYaml $s.resources | nindent 6 }}
    securityContext:
      {{- toYaml .Values.containerSecurityContext | nindent 6 }}
    volumeMounts:
      {{- include "ahps.scratchVolumeMounts" . | nindent 6 }}
      {{- if ne $auth.type "none" }}
      - name: kfp-token
        mountPath: /var/run/secrets/kfp
        readOnly: true
      {{- end }}
volumes:
  {{- include "ahps.scratchVolumes" . | nindent 2 }}
  {{- if eq $auth.type "serviceAccountToken" }}
  - name: kfp-token
    projected:
      sources:
        - serviceAccountToken:
            path: token
            audience: {{ $auth.audience }}
            expirationSeconds: {{ $auth.expirationSeconds }}
  {{- else if eq $auth.type "secret" }}
  - name: kfp-token
    secret:
      secretName: {{ $auth.existingSecret }}
      defaultMode: 0440
      items:
        - key: {{ $auth.key }}
          path: token
  {{- end }}
{{- with $s.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod template metadata of the scheduler. */}}
{{- define "ahps.scheduler.podMetadata" -}}
labels:
  {{- include "ahps.scheduler.labels" . | nindent 2 }}
  {{- with .Values.scheduler.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .Values.scheduler.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
