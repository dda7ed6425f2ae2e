{{/* Names and labels: every template takes them from here. */}}

{{- define "qscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "qscale.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "qscale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "qscale.labels" -}}
helm.sh/chart: {{ include "qscale.chart" . }}
{{ include "qscale.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: qscale
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* CRDs outlive a release (crds.keep): no instance label on them. */}}
{{- define "qscale.crdLabels" -}}
helm.sh/chart: {{ include "qscale.chart" . }}
app.kubernetes.io/name: {{ include "qscale.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: qscale
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "qscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qscale.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "qscale.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Lease that elects the acting replica (one per release). */}}
{{- define "qscale.leaseName" -}}
{{- default (include "qscale.fullname" .) .Values.operator.leaseName -}}
{{- end -}}

{{/*
Torch threads for inference: operator.torchThreads, or (0) the whole cores of the CPU limit,
at least 1 -- more threads than the container's CPU quota only adds throttling.
*/}}
{{- define "qscale.torchThreads" -}}
{{- $t := int .Values.operator.torchThreads -}}
{{- if gt $t 0 -}}
{{- $t -}}
{{- else -}}
{{- $cpu := toString (dig "limits" "cpu" "" (.Values.resources | default dict)) -}}
{{- if not $cpu -}}
1
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (div (int (trimSuffix "m" $cpu)) 1000) -}}
{{- else -}}
{{- max 1 (int (floor (float64 $cpu))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Checks the schema cannot express. */}}
{{- define "qscale.validate" -}}
{{- if and .Values.defaultModel.configMap (not .Values.defaultModel.sha256) -}}
{{- fail "defaultModel.sha256 is required with defaultModel.configMap (the pin printed by `qscale model publish`)" -}}
{{- end -}}
{{- if and .Values.defaultModel.sha256 (not .Values.defaultModel.configMap) -}}
{{- fail "defaultModel.sha256 is set but defaultModel.configMap is not" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (lt (float64 .Values.operator.leaseDurationSeconds) 2.0) -}}
{{- fail "operator.leaseDurationSeconds must be >= 2 with more than one replica" -}}
{{- end -}}
{{- end -}}
