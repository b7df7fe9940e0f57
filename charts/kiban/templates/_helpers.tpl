{{/* Names and labels shared by every template. */}}
{{- define "kiban.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiban.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "kiban.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kiban.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kiban.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiban.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kiban.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kiban.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kiban
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kiban.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kiban.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kiban.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "kiban.leaseName" -}}
{{- default (include "kiban.fullname" .) .Values.leaseName -}}
{{- end -}}

{{/* The accelerator-profiles file as config.parse_profiles reads it. */}}
{{- define "kiban.profilesFile" -}}
{{- dict "profiles" .Values.acceleratorProfiles | toYaml -}}
{{- end -}}

{{- define "kiban.monitoringApi" -}}
{{- .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}
{{- end -}}

{{/* {a: b, c: d} -> "a=b,c=d" (KIBAN_MONITOR_LABELS) */}}
{{- define "kiban.commaLabels" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* The gateway: its own name, labels (the engine NetworkPolicies admit exactly these) and ServiceAccount. */}}
{{- define "kiban.gatewayName" -}}
{{- printf "%s-gateway" (include "kiban.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiban.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "kiban.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "kiban.gatewayLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kiban.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kiban
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* KIBAN_GATEWAY_POD_LABELS for the operator: "a=b,c=d" of the gateway's selector labels. */}}
{{- define "kiban.gatewayPodLabels" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=gateway" (include "kiban.name" .) .Release.Name -}}
{{- end -}}
