{{/* Chart name, truncated to a DNS label. */}}
{{- define "gob-metrics.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: <release>-gob-metrics, or the release name when
it already contains the chart name. */}}
{{- define "gob-metrics.fullname" -}}
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

{{- define "gob-metrics.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gob-metrics.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gob-metrics.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gob-metrics.labels" -}}
helm.sh/chart: {{ include "gob-metrics.chart" . }}
{{ include "gob-metrics.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gob-metrics.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gob-metrics.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gob-metrics.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* "true" when a ClickHouse server holds the data (clickhouse.url set), else "". */}}
{{- define "gob-metrics.serverMode" -}}
{{- if .Values.clickhouse.url }}true{{ end }}
{{- end }}

{{/* Where the config file and the data directory are mounted in the pod. */}}
{{- define "gob-metrics.configDir" -}}/etc/gob-metrics{{- end }}
{{- define "gob-metrics.dataDir" -}}/data{{- end }}

{{/* Refuse values that cannot work, with a message saying what to do instead. */}}
{{- define "gob-metrics.validate" -}}
{{- $cfg := .Values.config | default dict }}
{{- $server := get $cfg "server" | default dict }}
{{- range $key := list "listen" "data_dir" }}
{{- if hasKey $server $key }}
{{- fail (printf "config.server.%s is set by the chart (listen: 0.0.0.0:<containerPort>, data_dir: %s): remove it from config" $key (include "gob-metrics.dataDir" $)) }}
{{- end }}
{{- end }}
{{- $storage := get $cfg "storage" | default dict }}
{{- $ch := get $storage "clickhouse" | default dict }}
{{- range $key := list "url" "cluster" }}
{{- if hasKey $ch $key }}
{{- fail (printf "config.storage.clickhouse.%s is set by the chart: use clickhouse.%s instead (and clickhouse.passwordSecret for the password)" $key $key) }}
{{- end }}
{{- end }}
{{- $url := .Values.clickhouse.url | default "" }}
{{- if $url }}
{{- if not (regexMatch "^clickhouses?://[^/]" $url) }}
{{- fail (printf "clickhouse.url %q must look like clickhouse://user@host:9000/database (or clickhouses:// for TLS)" $url) }}
{{- end }}
{{- if regexMatch "^clickhouses?://[^/@]*:[^/@]*@" $url }}
{{- fail "clickhouse.url must not hold a password (it would be stored in the ConfigMap): put the password in a Secret and name it in clickhouse.passwordSecret.name" }}
{{- end }}
{{- else }}
{{- if .Values.clickhouse.cluster }}
{{- fail "clickhouse.cluster is set but clickhouse.url is empty: a cluster needs a ClickHouse server URL (the embedded engine has no cluster)" }}
{{- end }}
{{- if .Values.clickhouse.passwordSecret.name }}
{{- fail "clickhouse.passwordSecret.name is set but clickhouse.url is empty: set the ClickHouse server URL (without the password)" }}
{{- end }}
{{- if gt (int .Values.replicas) 1 }}
{{- fail (printf "replicas=%d with the embedded engine (clickhouse.url empty): one gob-metrics process owns one data directory, so embedded mode runs exactly 1 replica. To scale out, set clickhouse.url to a ClickHouse server and run stateless replicas." (int .Values.replicas)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The config file: the `config` values tree plus the settings the chart owns. */}}
{{- define "gob-metrics.configFile" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $listen := printf "0.0.0.0:%d" (int .Values.containerPort) }}
{{- $_ := mustMergeOverwrite $cfg (dict "server" (dict "listen" $listen "data_dir" (include "gob-metrics.dataDir" .))) }}
{{- if .Values.clickhouse.url }}
{{- $ch := dict "url" .Values.clickhouse.url }}
{{- if .Values.clickhouse.cluster }}
{{- $_ := set $ch "cluster" .Values.clickhouse.cluster }}
{{- end }}
{{- $_ := mustMergeOverwrite $cfg (dict "storage" (dict "clickhouse" $ch)) }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* clickhouse.url with the password of the Secret put in by Kubernetes: the
$(CLICKHOUSE_PASSWORD) reference is expanded from the variable defined before it. */}}
{{- define "gob-metrics.clickhouseUrlWithPassword" -}}
{{- $url := .Values.clickhouse.url }}
{{- if regexMatch "^clickhouses?://[^/@]+@" $url }}
{{- regexReplaceAll "^(clickhouses?://)([^/@]+)@" $url "${1}${2}:$$(CLICKHOUSE_PASSWORD)@" }}
{{- else }}
{{- regexReplaceAll "^(clickhouses?://)" $url "${1}default:$$(CLICKHOUSE_PASSWORD)@" }}
{{- end }}
{{- end }}
