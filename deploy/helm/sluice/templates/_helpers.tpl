{{- define "sluice.fullname" -}}
{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end }}

{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: Helm
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end }}

{{/* The instance config, sluice.json (SPEC §2): its hash is in the pod
template, so a change of it rolls the pods. */}}
{{- define "sluice.config" -}}
{
  "fleet": {"name": {{ .Values.fleet.name | toJson }}},
  "workers": {{ .Values.workers | toJson }},
  "listeners": [
    {"address": "0.0.0.0:8080"}
    {{- if .Values.tls.existingSecret }},
    {"address": "0.0.0.0:8443",
     "tls": {"certificate": "tls/tls.crt", "private_key": "tls/tls.key"}}
    {{- end }}
  ],
  "admin": {"address": "0.0.0.0:9901", "token": "env:SLUICE_ADMIN_TOKEN"},
  "redis": {
    {{- if eq .Values.redis.mode "sentinel" }}
    "sentinels": {{ required "redis.sentinels: list the Sentinels (host:port) for redis.mode sentinel" .Values.redis.sentinels | toJson }},
    "master_name": {{ .Values.redis.masterName | toJson }},
    {{- else if eq .Values.redis.mode "address" }}
    "address": {{ required "redis.address: where your Redis is (host:port)" .Values.redis.address | toJson }},
    {{- else }}
    {{- required "redis.mode: address or sentinel" "" }}
    {{- end }}
    "wait_replicas": {{ .Values.redis.waitReplicas | toJson }},
    "password": "env:SLUICE_REDIS_PASSWORD",
    "db": {{ .Values.redis.db | toJson }},
    "flush_interval_ms": 1000, "retention_minutes": 10080},
  "limits": {{ .Values.limits | toJson }},
  "log": {{ .Values.log | toJson }},
  "endpoints": {{ .Values.endpoints | toJson }}
}
{{- end }}
