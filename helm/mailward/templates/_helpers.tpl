{{/* Names ---------------------------------------------------------------------------------------------------- */}}

{{- define "mailward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mailward.fullname" -}}
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

{{- define "mailward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels: call with (dict "root" $ "component" "ingress") --------------------------------------------------- */}}

{{- define "mailward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailward.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mailward.labels" -}}
helm.sh/chart: {{ include "mailward.chart" .root }}
{{ include "mailward.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: mailward
{{- end }}

{{- define "mailward.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secrets ------------------------------------------------------------------------------------------------- */}}

{{/* The Secret the chart creates for whatever has no existingSecret. */}}
{{- define "mailward.secretName" -}}
{{- include "mailward.fullname" . }}
{{- end }}

{{- define "mailward.databaseSecretName" -}}
{{- default (include "mailward.secretName" .) .Values.database.existingSecret }}
{{- end }}

{{- define "mailward.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}

{{- define "mailward.secretKeySecretName" -}}
{{- default (include "mailward.secretName" .) .Values.secretKey.existingSecret }}
{{- end }}

{{- define "mailward.secretKeySecretKey" -}}
{{- if .Values.secretKey.existingSecret }}{{ .Values.secretKey.existingSecretKey }}{{ else }}secret-key{{ end }}
{{- end }}

{{/* The Secret and key holding the Redis password, or nothing when there is none. */}}
{{- define "mailward.redisPasswordSecretName" -}}
{{- if .Values.redis.passwordSecret }}{{ .Values.redis.passwordSecret }}{{ else if .Values.redis.password }}{{ include "mailward.secretName" . }}{{ end }}
{{- end }}

{{- define "mailward.redisPasswordSecretKey" -}}
{{- if .Values.redis.passwordSecret }}{{ .Values.redis.passwordSecretKey }}{{ else }}redis-password{{ end }}
{{- end }}

{{- define "mailward.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "mailward.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/* Stops rendering with a clear message when a value the installation cannot run without is missing. */}}
{{- define "mailward.validate" -}}
{{- if not (or .Values.database.url .Values.database.existingSecret) }}
{{- fail "set database.url (or database.existingSecret): Mailward needs an external PostgreSQL in a cluster" }}
{{- end }}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) }}
{{- fail "set redis.url (or redis.existingSecret): without it every pod would start its own private Valkey" }}
{{- end }}
{{- if not .Values.hostname }}
{{- fail "set hostname: the ingress's public host name (MAILWARD_HOSTNAME), as in the MX and PTR records" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not (and .Values.tls.certificate .Values.tls.key)) }}
{{- fail "tls.enabled needs tls.existingSecret, or both tls.certificate and tls.key" }}
{{- end }}
{{- if and .Values.ingress.submission.enabled (not .Values.tls.enabled) }}
{{- fail "ingress.submission.enabled needs tls.enabled: submission requires STARTTLS before AUTH" }}
{{- end }}
{{- end }}

{{/* Changes whenever a setting that pods read at start changes, so that an upgrade restarts them. */}}
{{- define "mailward.configChecksum" -}}
{{- $cfg := dict "database" .Values.database "redis" .Values.redis "secretKey" .Values.secretKey "hostname" .Values.hostname "logLevel" .Values.logLevel "clamd" .Values.clamd "dns" .Values.dns "relayhost" .Values.relayhost "tls" .Values.tls "extraEnv" .Values.extraEnv "egress" .Values.egress "metrics" .Values.metrics }}
{{- toJson $cfg | sha256sum }}
{{- end }}

{{/* Environment -------------------------------------------------------------------------------------------- */}}

{{/* The MAILWARD_* variables every Mailward container gets. */}}
{{- define "mailward.env" -}}
- name: MAILWARD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "mailward.databaseSecretName" . }}
      key: {{ include "mailward.databaseSecretKey" . }}
- name: MAILWARD_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mailward.secretKeySecretName" . }}
      key: {{ include "mailward.secretKeySecretKey" . }}
{{- if .Values.redis.existingSecret }}
- name: MAILWARD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else }}
- name: MAILWARD_REDIS_URL
  value: {{ .Values.redis.url | quote }}
{{- end }}
{{- with include "mailward.redisPasswordSecretName" . }}
- name: MAILWARD_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ include "mailward.redisPasswordSecretKey" $ }}
{{- end }}
{{- with .Values.egress.tenantAllow }}
- name: MAILWARD_TENANT_EGRESS_ALLOW
  value: {{ join "," . | quote }}
{{- end }}
- name: MAILWARD_TENANT_SMTP_PORTS
  value: {{ join "," .Values.egress.smtpPorts | quote }}
- name: MAILWARD_TENANT_LDAP_PORTS
  value: {{ join "," .Values.egress.ldapPorts | quote }}
- name: MAILWARD_HOSTNAME
  value: {{ .Values.hostname | quote }}
- name: MAILWARD_DATA_DIR
  value: {{ .Values.dataDir | quote }}
- name: MAILWARD_SMTP_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.ingress.containerPort) | quote }}
- name: MAILWARD_WEB_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .Values.web.containerPort) | quote }}
- name: MAILWARD_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- with .Values.clamd.address }}
- name: MAILWARD_CLAMD
  value: {{ . | quote }}
{{- end }}
{{- with .Values.dns }}
- name: MAILWARD_DNS
  value: {{ . | quote }}
{{- end }}
{{- with .Values.relayhost }}
- name: MAILWARD_RELAYHOST
  value: {{ . | quote }}
{{- end }}
- name: PYTHONUNBUFFERED
  value: "1"
# The root filesystem is read-only: no bytecode cache writes.
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Metrics ------------------------------------------------------------------------------------------------ */}}

{{/* Prometheus discovery annotations of a pod: (dict "root" . "port" PORT); nothing when metrics.podAnnotations is
     off or the port is 0. */}}
{{- define "mailward.metricsAnnotations" -}}
{{- if and .root.Values.metrics.podAnnotations .port }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* The per-process metrics endpoint of the ingress and the worker: its variable. */}}
{{- define "mailward.metricsEnv" -}}
{{- if .Values.metrics.port }}
- name: MAILWARD_METRICS_PORT
  value: {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
{{- end }}
{{- end }}

{{/* ... and its container port. */}}
{{- define "mailward.metricsPort" -}}
{{- if .Values.metrics.port }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end }}

{{/* The Secret holding the web's metrics token, or nothing when there is none. */}}
{{- define "mailward.metricsTokenSecretName" -}}
{{- if .Values.metrics.web.existingSecret }}{{ .Values.metrics.web.existingSecret }}{{ else if .Values.metrics.web.token }}{{ include "mailward.secretName" . }}{{ end }}
{{- end }}

{{- define "mailward.metricsTokenSecretKey" -}}
{{- if .Values.metrics.web.existingSecret }}{{ .Values.metrics.web.existingSecretKey }}{{ else }}metrics-token{{ end }}
{{- end }}

{{/* Pod pieces --------------------------------------------------------------------------------------------- */}}

{{- define "mailward.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "mailward.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "mailward.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ .Values.dataDir }}
{{- end }}

{{- define "mailward.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataDirSizeLimit }}
{{- end }}

{{/*
Probes of the worker and the scheduler. They serve no port, so an exec probe:
- readiness: the configured Redis answers PING (their queue and their only way to get work); a pod that cannot reach
  it shows NOT READY and counts as unavailable for its PodDisruptionBudget;
- liveness: the interpreter starts and imports Mailward's configuration (the container's filesystem and memory are
  usable). It deliberately does not depend on Redis or PostgreSQL: during an outage of those, restarting every
  worker would only add crash-loop back-off to the recovery. A dead main process ends the container by itself.
`mailward db current` would also work but loads SQLAlchemy, Alembic and opens a database connection every period.
*/}}
{{- define "mailward.execProbes" -}}
readinessProbe:
  exec:
    command:
      - python
      - -c
      - "import sys; from tenants.platform.config import Config; from tenants.platform.redisconn import redis_client; sys.exit(0 if redis_client(Config.from_env()).ping() else 1)"
  initialDelaySeconds: 5
  periodSeconds: 20
  timeoutSeconds: 15
  failureThreshold: 3
livenessProbe:
  exec:
    command:
      - python
      - -c
      - "import tenants.platform.config"
  initialDelaySeconds: 10
  periodSeconds: 30
  timeoutSeconds: 10
  failureThreshold: 3
{{- end }}
