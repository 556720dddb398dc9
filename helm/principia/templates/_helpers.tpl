{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "principia.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, prefixed with the chart's unless it holds it. */}}
{{- define "principia.fullname" -}}
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

{{- define "principia.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "principia.labels" -}}
helm.sh/chart: {{ include "principia.chart" . }}
{{ include "principia.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "principia.selectorLabels" -}}
app.kubernetes.io/name: {{ include "principia.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per-role names and labels: include with (dict "root" $ "component" "worker"). */}}
{{- define "principia.componentName" -}}
{{- printf "%s-%s" (include "principia.fullname" .root | trunc 52 | trimSuffix "-") .component }}
{{- end }}

{{- define "principia.componentLabels" -}}
{{ include "principia.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "principia.componentSelectorLabels" -}}
{{ include "principia.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "principia.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "principia.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "principia.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Secrets: an existing one per service, else the chart's own. */}}
{{- define "principia.rabbitmqSecret" -}}
{{- .Values.rabbitmq.existingSecret | default (include "principia.fullname" .) }}
{{- end }}

{{- define "principia.redisSecret" -}}
{{- .Values.redis.existingSecret | default (include "principia.fullname" .) }}
{{- end }}

{{- define "principia.llmSecret" -}}
{{- .Values.llm.existingSecret | default (include "principia.fullname" .) }}
{{- end }}

{{/* Whether the chart creates its own Secret. */}}
{{- define "principia.ownSecret" -}}
{{- if or (not .Values.rabbitmq.existingSecret) (not .Values.redis.existingSecret) (and .Values.llm.apiKey (not .Values.llm.existingSecret)) }}true{{- end }}
{{- end }}

{{- define "principia.kedaEnabled" -}}
{{- if .Values.worker.keda.enabled }}true{{- end }}
{{- end }}

{{/* Worker pod termination grace: explicit, or PRINCIPIA_GRACE_SECS plus a minute. */}}
{{- define "principia.workerTerminationGrace" -}}
{{- $grace := int64 .Values.worker.graceSecs }}
{{- $termination := int64 (.Values.worker.terminationGracePeriodSeconds | default (add $grace 60)) }}
{{- if le $termination $grace }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must exceed worker.graceSecs (%d), or SIGKILL cuts the drain short" $termination $grace) }}
{{- end }}
{{- $termination }}
{{- end }}

{{/* Checks of combinations the schema cannot express. */}}
{{- define "principia.validate" -}}
{{- if and .Values.worker.keda.enabled .Values.worker.autoscaling.enabled }}
{{- fail "worker.keda.enabled and worker.autoscaling.enabled both set: choose one autoscaler" }}
{{- end }}
{{- if and .Values.s3.bucket .Values.dataDir.existingClaim }}
{{- fail "s3.bucket and dataDir.existingClaim both set: the binary takes one store (PRINCIPIA_S3_BUCKET or PRINCIPIA_DATA_DIR)" }}
{{- end }}
{{- if not (or .Values.s3.bucket .Values.dataDir.existingClaim) }}
{{- fail "no store: set s3.bucket, or dataDir.existingClaim (a ReadWriteMany claim)" }}
{{- end }}
{{- end }}

{{/* Environment shared by the coordinator and the workers. */}}
{{- define "principia.env" -}}
- name: PRINCIPIA_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "principia.rabbitmqSecret" . }}
      key: {{ .Values.rabbitmq.amqpUrlKey }}
- name: PRINCIPIA_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "principia.redisSecret" . }}
      key: {{ .Values.redis.urlKey }}
{{- with .Values.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/* Volumes: a writable /tmp (the root filesystem is read-only) and the optional data dir. */}}
{{- define "principia.volumes" -}}
- name: tmp
  emptyDir: {}
{{- with .Values.dataDir.existingClaim }}
- name: data
  persistentVolumeClaim:
    claimName: {{ . }}
{{- end }}
{{- end }}

{{- define "principia.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.dataDir.existingClaim }}
- name: data
  mountPath: {{ .Values.dataDir.mountPath }}
{{- end }}
{{- end }}
