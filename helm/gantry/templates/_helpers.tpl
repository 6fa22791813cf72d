{{/* The chart's name, or nameOverride. */}}
{{- define "gantry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: release-chart unless the release name contains the chart's. */}}
{{- define "gantry.fullname" -}}
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

{{- define "gantry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The standard app.kubernetes.io labels. */}}
{{- define "gantry.labels" -}}
helm.sh/chart: {{ include "gantry.chart" . }}
{{ include "gantry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: control-plane
app.kubernetes.io/part-of: gantry
{{- end }}

{{- define "gantry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gantry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gantry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gantry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gantry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Helm reads every YAML number as a float, and toToml writes floats as 100.0 or
2e+06, which gantry refuses for integer keys. This turns integral floats back
into integers, in place, through maps and lists.
*/}}
{{- define "gantry.intify" -}}
{{- $map := . -}}
{{- range $key, $value := $map -}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) -}}
{{- $_ := set $map $key (int64 $value) -}}
{{- else if kindIs "map" $value -}}
{{- include "gantry.intify" $value -}}
{{- else if kindIs "slice" $value -}}
{{- $list := list -}}
{{- range $item := $value -}}
{{- if kindIs "map" $item -}}
{{- include "gantry.intify" $item -}}
{{- $list = append $list $item -}}
{{- else if and (kindIs "float64" $item) (eq $item (floor $item)) -}}
{{- $list = append $list (int64 $item) -}}
{{- else -}}
{{- $list = append $list $item -}}
{{- end -}}
{{- end -}}
{{- $_ := set $map $key $list -}}
{{- end -}}
{{- end -}}
{{- end -}}
