{{/* Names, labels and the secret references every template shares. */}}

{{- define "consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "consumer.fullname" -}}
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

{{- define "consumer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "consumer.labels" -}}
helm.sh/chart: {{ include "consumer.chart" . }}
{{ include "consumer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "consumer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "consumer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "consumer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the protocol authenticates with SASL. */}}
{{- define "consumer.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{/* True (non-empty) when the protocol encrypts with TLS. */}}
{{- define "consumer.tls" -}}
{{- if or (eq .Values.kafka.securityProtocol "SSL") (eq .Values.kafka.securityProtocol "SASL_SSL") }}true{{ end }}
{{- end }}

{{- define "consumer.apiKeySecretName" -}}
{{- default (include "consumer.fullname" .) .Values.apiKey.existingSecret }}
{{- end }}

{{- define "consumer.apiKeySecretKey" -}}
{{- if .Values.apiKey.existingSecret }}{{ .Values.apiKey.existingSecretKey }}{{ else }}inkeep-api-key{{ end }}
{{- end }}

{{- define "consumer.saslSecretName" -}}
{{- default (include "consumer.fullname" .) .Values.kafka.sasl.existingSecret }}
{{- end }}

{{- define "consumer.saslSecretKey" -}}
{{- if .Values.kafka.sasl.existingSecret }}{{ .Values.kafka.sasl.existingSecretKey }}{{ else }}kafka-sasl-password{{ end }}
{{- end }}

{{/* True (non-empty) when the chart must create its own Secret. */}}
{{- define "consumer.ownSecret" -}}
{{- if and .Values.apiKey.value (not .Values.apiKey.existingSecret) }}true{{ end }}
{{- if and (include "consumer.sasl" .) .Values.kafka.sasl.password (not .Values.kafka.sasl.existingSecret) }}true{{ end }}
{{- end }}

{{/*
A number as the worker's settings parse it: YAML gives large integers as
floats, which would otherwise print as 1.048576e+06.
*/}}
{{- define "consumer.number" -}}
{{- if eq (float64 .) (floor .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/*
A Kubernetes quantity ("2Gi", "512Mi", "4G", "1000") in bytes.
*/}}
{{- define "consumer.bytes" -}}
{{- $quantity := toString . -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $number := regexFind "^[0-9]+([.][0-9]+)?" $quantity -}}
{{- $unit := trimPrefix $number $quantity -}}
{{- if or (not $number) (and $unit (not (hasKey $units $unit))) -}}
{{- fail (printf "cannot read %q as a quantity of bytes" $quantity) -}}
{{- end -}}
{{- mulf $number (ternary (get $units $unit) 1 (ne $unit "")) | int64 -}}
{{- end }}

{{- define "consumer.stateDir" -}}
/var/lib/inkeep-consumer/state
{{- end }}

{{- define "consumer.caPath" -}}
/etc/inkeep-consumer/kafka-ca/{{ .Values.kafka.caCert.key }}
{{- end }}

{{- define "consumer.terminationGracePeriodSeconds" -}}
{{- add .Values.shutdown.graceSeconds .Values.shutdown.marginSeconds }}
{{- end }}

{{/*
Checks the schema cannot express readably; they also hold when the schema is
skipped (--skip-schema-validation).
*/}}
{{- define "consumer.validate" -}}
{{- if not .Values.kafka.bootstrapServers }}
{{- fail "kafka.bootstrapServers is required (comma-separated host:port list)" }}
{{- end }}
{{- if not (or .Values.apiKey.value .Values.apiKey.existingSecret) }}
{{- fail "an API key is required: set apiKey.value or apiKey.existingSecret" }}
{{- end }}
{{- if include "consumer.sasl" . }}
{{- if not .Values.kafka.sasl.mechanism }}
{{- fail (printf "kafka.sasl.mechanism is required with securityProtocol %s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if not (or .Values.kafka.sasl.username (and .Values.kafka.sasl.existingSecret .Values.kafka.sasl.existingSecretUsernameKey)) }}
{{- fail "kafka.sasl.username (or kafka.sasl.existingSecret with existingSecretUsernameKey) is required with SASL" }}
{{- end }}
{{- if not (or .Values.kafka.sasl.password .Values.kafka.sasl.existingSecret) }}
{{- fail "kafka.sasl.password or kafka.sasl.existingSecret is required with SASL" }}
{{- end }}
{{- end }}
{{- if and .Values.kafka.caCert.existingSecret .Values.kafka.caCert.existingConfigMap }}
{{- fail "kafka.caCert: set existingSecret or existingConfigMap, not both" }}
{{- end }}
{{- if and (or .Values.kafka.caCert.existingSecret .Values.kafka.caCert.existingConfigMap) (not (include "consumer.tls" .)) }}
{{- fail (printf "kafka.caCert needs securityProtocol SSL or SASL_SSL, not %s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are exclusive: KEDA manages its own HPA" }}
{{- end }}
{{- end }}
