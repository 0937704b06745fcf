{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "pqmpc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped base name: the release name, plus the chart name unless it is already in it. */}}
{{- define "pqmpc.fullname" -}}
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

{{/* Name of the operator's Deployment, Service, ClusterRole and binding. */}}
{{- define "pqmpc.operatorName" -}}
{{- printf "%s-operator" (include "pqmpc.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pqmpc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object, less the selector labels. */}}
{{- define "pqmpc.commonLabels" -}}
helm.sh/chart: {{ include "pqmpc.chart" . }}
app.kubernetes.io/part-of: pqmpc
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels on every object that carries no selector labels. */}}
{{- define "pqmpc.labels" -}}
{{ include "pqmpc.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector of the operator's pods. app.kubernetes.io/name=pqmpc-operator is what the
operator's NetworkPolicies let in to the node pods (OperatorSettings.operator_pod_labels).
*/}}
{{- define "pqmpc.operatorSelectorLabels" -}}
app.kubernetes.io/name: pqmpc-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pqmpc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pqmpc.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pqmpc.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* True (non-empty) where the Prometheus Operator's API is served. */}}
{{- define "pqmpc.hasPrometheusOperator" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}
