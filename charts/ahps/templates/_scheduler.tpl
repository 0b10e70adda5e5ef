{{/*
The scheduler's command line. The parameters are not on it: `--params-dir /etc/ahps/params` reads
one file per key of the mounted ConfigMap at every start, so editing the ConfigMap (a new key
included) changes the next submit without an upgrade.
*/}}
{{- define "ahps.scheduler.paramsDir" -}}
/etc/ahps/params
{{- end }}

{{- define "ahps.scheduler.args" -}}
{{- $s := .Values.scheduler }}
{{- $args := list "submit" $s.pipeline }}
{{- if eq $s.mode "recurringRun" }}
{{- /* --replace: `ahps schedule` keeps an existing recurring run of this name unless told to replace it,
       so without it a `helm upgrade` would never update the schedule or the parameters. */}}
{{- $args = list "schedule" $s.pipeline "--cron" (include "ahps.scheduler.cron" .) "--name" $s.recurringRunName "--replace" }}
{{- end }}
{{- $args = concat $args (list "--params-dir" (include "ahps.scheduler.paramsDir" .) "--host" .Values.kfp.host "--experiment" $s.experiment) }}
{{- toYaml (concat $args $s.extraArgs) }}
{{- end }}

{{/* The schedule, normalized: trimmed, single spaces, lower case (CronJob macros are case-sensitive). */}}
{{- define "ahps.scheduler.cron" -}}
{{- regexSplit "\\s+" (trim .Values.scheduler.schedule) -1 | join " " | lower }}
{{- end }}

{{/*
Checks of the scheduler values the schema cannot express: the parameters the pipeline has no default
for on a cluster, and a schedule the chosen mode can run (the schema already checked its syntax).
*/}}
{{- define "ahps.scheduler.validate" -}}
{{- $s := .Values.scheduler }}
{{- $p := $s.params }}
{{- if eq $s.pipeline "reevaluate" }}
{{- $missing := list }}
{{- range list "data_source" "benchmark" }}
{{- if not (get $p .) }}{{ $missing = append $missing (printf "scheduler.params.%s" .) }}{{ end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "scheduler.enabled=true needs %s (empty now, so every scheduled run would be refused): set data_source to the s3://BUCKET/PREFIX of the datasets and benchmark to the NATS-Bench/NAS-Bench-201 records (s3://BUCKET/KEY, a path in the pods, or \"fixture\" for a smoke test), or leave scheduler.enabled=false" (join " and " $missing)) }}
{{- end }}
{{- else if and (not $p.data_source) (not (has (toString (get $p "dataset")) (list "" "digits"))) }}
{{- fail (printf "scheduler.enabled=true with pipeline=transfer and dataset %s needs scheduler.params.data_source: the s3://BUCKET/PREFIX of the dataset files" (get $p "dataset")) }}
{{- end }}
{{- $cron := include "ahps.scheduler.cron" . }}
{{- $fields := splitList " " $cron }}
{{- if hasPrefix "@" $cron }}
{{- if and (eq $s.mode "cronjob") (hasPrefix "@every" $cron) }}
{{- fail (printf "scheduler.schedule=%q cannot run as a Kubernetes CronJob (scheduler.mode=cronjob takes 5-field cron or @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly): use scheduler.mode=recurringRun for @every" $s.schedule) }}
{{- end }}
{{- else }}
{{- if and (eq $s.mode "cronjob") (ne (len $fields) 5) }}
{{- fail (printf "scheduler.schedule=%q has %d fields: a Kubernetes CronJob (scheduler.mode=cronjob) takes 5 (minute hour day-of-month month day-of-week); 6 fields (seconds first) need scheduler.mode=recurringRun" $s.schedule (len $fields)) }}
{{- end }}
{{- if not (has (len $fields) (list 5 6)) }}
{{- fail (printf "scheduler.schedule=%q has %d fields: expected 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)" $s.schedule (len $fields)) }}
{{- end }}
{{- $names := list "second" "minute" "hour" "day of month" "month" "day of week" }}
{{- if eq (len $fields) 5 }}{{ $names = rest $names }}{{ end }}
{{- $numbers := dict "jan" "1" "feb" "2" "mar" "3" "apr" "4" "may" "5" "jun" "6" "jul" "7" "aug" "8" "sep" "9" "oct" "10" "nov" "11" "dec" "12" "sun" "0" "mon" "1" "tue" "2" "wed" "3" "thu" "4" "fri" "5" "sat" "6" }}
{{- range $i, $field := $fields }}
{{- range splitList "," $field }}
{{- $ends := splitList "-" (first (splitList "/" .)) }}
{{- if eq (len $ends) 2 }}
{{- $a := get $numbers (first $ends) | default (first $ends) }}
{{- $b := get $numbers (last $ends) | default (last $ends) }}
{{- if gt (atoi $a) (atoi $b) }}
{{- fail (printf "scheduler.schedule=%q: %s field %q has a decreasing range" $s.schedule (index $names $i) $field) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
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
      # Hosts the pipeline may send MLflow credentials to (the namespace's policy, not a parameter).
      - name: AHPS_ALLOWED_TRACKING_HOSTS
        valueFrom:
          configMapKeyRef:
            name: ahps-policy
            key: AHPS_ALLOWED_TRACKING_HOSTS
      {{- with $s.extraEnv }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    resources:
      {{- toYaml $s.resources | nindent 6 }}
    securityContext:
      {{- toYaml .Values.containerSecurityContext | nindent 6 }}
    volumeMounts:
      {{- include "ahps.scratchVolumeMounts" . | nindent 6 }}
      - name: params
        mountPath: {{ include "ahps.scheduler.paramsDir" . }}
        readOnly: true
      {{- if ne $auth.type "none" }}
      - name: kfp-token
        mountPath: /var/run/secrets/kfp
        readOnly: true
      {{- end }}
volumes:
  {{- include "ahps.scratchVolumes" . | nindent 2 }}
  # Every key of the ConfigMap becomes a file (no `items:` list): keys added later appear too.
  - name: params
    configMap:
      name: {{ include "ahps.scheduler.fullname" . }}
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
