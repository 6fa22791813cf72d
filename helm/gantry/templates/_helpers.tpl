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

{{/*
The pod template both workloads share (StatefulSet in embedded mode,
Deployment in redis mode).
*/}}
{{- define "gantry.podTemplate" -}}
template:
  metadata:
    labels:
      {{- include "gantry.labels" . | nindent 6 }}
      {{- with .Values.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with .Values.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    serviceAccountName: {{ include "gantry.serviceAccountName" . }}
    automountServiceAccountToken: false
    {{- with .Values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.priorityClassName }}
    priorityClassName: {{ . }}
    {{- end }}
    securityContext:
      {{- toYaml .Values.podSecurityContext | nindent 6 }}
    terminationGracePeriodSeconds: {{ add .Values.shutdownGraceSeconds 10 }}
    containers:
      - name: gantry
        image: {{ include "gantry.image" . | quote }}
        imagePullPolicy: {{ .Values.image.pullPolicy }}
        args: ["serve", "--config", "/etc/gantry/gantry.toml"]
        env:
          - name: GANTRY_LISTEN
            value: "0.0.0.0:{{ .Values.service.grpcPort }}"
          - name: GANTRY_METRICS_LISTEN
            value: "0.0.0.0:{{ .Values.service.metricsPort }}"
          - name: GANTRY_DATA_DIR
            value: /data
          - name: GANTRY_OTLP_HTTP_LISTEN
            value: {{ if .Values.service.otlpHttpPort }}"0.0.0.0:{{ .Values.service.otlpHttpPort }}"{{ else }}""{{ end }}
          {{- if eq .Values.mode "redis" }}
          - name: GANTRY_STORAGE_BACKEND
            value: redis
          {{- with .Values.redis.url }}
          - name: GANTRY_STORAGE_REDIS_URL
            value: {{ . | quote }}
          {{- end }}
          {{- with .Values.redis.cluster }}
          - name: GANTRY_STORAGE_REDIS_CLUSTER
            value: {{ join "," . | quote }}
          {{- end }}
          {{- if .Values.redis.clusterTls }}
          - name: GANTRY_STORAGE_REDIS_CLUSTER_TLS
            value: "true"
          {{- end }}
          {{- with .Values.redis.username }}
          - name: GANTRY_STORAGE_REDIS_USERNAME
            value: {{ . | quote }}
          {{- end }}
          - name: GANTRY_STORAGE_REDIS_KEY_PREFIX
            value: {{ .Values.redis.keyPrefix | quote }}
          {{- with .Values.redis.existingSecret }}
          # The password from a Secret: an environment variable gantry
          # reads directly, never a configuration key it could log.
          - name: GANTRY_STORAGE_REDIS_PASSWORD
            valueFrom:
              secretKeyRef:
                name: {{ . }}
                key: {{ $.Values.redis.passwordKey }}
          {{- end }}
          {{- end }}
          - name: GANTRY_SERVER_SHUTDOWN_GRACE
            value: "{{ .Values.shutdownGraceSeconds }}s"
          {{- if .Values.tls.enabled }}
          - name: GANTRY_SERVER_TLS_CERT_FILE
            value: /etc/gantry-tls/tls.crt
          - name: GANTRY_SERVER_TLS_KEY_FILE
            value: /etc/gantry-tls/tls.key
          {{- if .Values.tls.mutual }}
          - name: GANTRY_SERVER_TLS_CLIENT_CA_FILE
            value: /etc/gantry-tls/ca.crt
          {{- end }}
          {{- if .Values.tls.metrics }}
          - name: GANTRY_TELEMETRY_METRICS_TLS_CERT_FILE
            value: /etc/gantry-tls/tls.crt
          - name: GANTRY_TELEMETRY_METRICS_TLS_KEY_FILE
            value: /etc/gantry-tls/tls.key
          {{- end }}
          {{- end }}
          {{- if .Values.auth.enabled }}
          - name: GANTRY_AUTH_TOKENS_FILE
            value: /etc/gantry-auth/tokens.toml
          - name: GANTRY_AUTH_POLICY_FILE
            value: /etc/gantry-auth/policy.toml
          {{- end }}
          {{- if .Values.metricsAuth.existingSecret }}
          - name: GANTRY_TELEMETRY_METRICS_TOKEN_FILE
            value: /etc/gantry-metrics-auth/{{ .Values.metricsAuth.key }}
          {{- end }}
          {{- with .Values.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        ports:
          - name: grpc
            containerPort: {{ .Values.service.grpcPort }}
            protocol: TCP
          - name: metrics
            containerPort: {{ .Values.service.metricsPort }}
            protocol: TCP
          {{- if .Values.service.otlpHttpPort }}
          - name: otlp-http
            containerPort: {{ .Values.service.otlpHttpPort }}
            protocol: TCP
          {{- end }}
        {{- $probe := include "gantry.probe" . }}
        startupProbe:
          {{- $probe | nindent 10 }}
          periodSeconds: {{ .Values.probes.startup.periodSeconds }}
          failureThreshold: {{ .Values.probes.startup.failureThreshold }}
        livenessProbe:
          {{- $probe | nindent 10 }}
          periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
          failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
        readinessProbe:
          {{- $probe | nindent 10 }}
          periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
          failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
        resources:
          {{- toYaml .Values.resources | nindent 10 }}
        securityContext:
          {{- toYaml .Values.securityContext | nindent 10 }}
        volumeMounts:
          - name: data
            mountPath: /data
          - name: config
            mountPath: /etc/gantry
            readOnly: true
          - name: tmp
            mountPath: /tmp
          {{- if .Values.tls.enabled }}
          - name: tls
            mountPath: /etc/gantry-tls
            readOnly: true
          {{- end }}
          {{- if .Values.auth.enabled }}
          - name: auth
            mountPath: /etc/gantry-auth
            readOnly: true
          {{- end }}
          {{- with .Values.metricsAuth.existingSecret }}
          - name: metrics-auth
            mountPath: /etc/gantry-metrics-auth
            readOnly: true
          {{- end }}
    volumes:
      - name: config
        configMap:
          name: {{ include "gantry.fullname" . }}
      - name: tmp
        emptyDir: {}
      {{- if .Values.tls.enabled }}
      # Mounted as a directory (no subPath), so a renewed Secret reaches the
      # pod and gantry reloads it.
      - name: tls
        secret:
          secretName: {{ .Values.tls.secretName }}
      {{- end }}
      {{- if .Values.auth.enabled }}
      - name: auth
        secret:
          secretName: {{ .Values.auth.existingSecret }}
      {{- end }}
      {{- with .Values.metricsAuth.existingSecret }}
      - name: metrics-auth
        secret:
          secretName: {{ . }}
      {{- end }}
      {{- if or (eq .Values.mode "redis") (not .Values.persistence.enabled) }}
      # Redis mode: the replicas' shared state is in Redis; this holds only
      # what each replica keeps for itself (query statistics, spans).
      - name: data
        emptyDir: {}
      {{- end }}
    {{- with .Values.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- if eq .Values.mode "redis" }}
    {{- with .Values.topologySpreadConstraints }}
    topologySpreadConstraints:
      {{- tpl (toYaml .) $ | nindent 6 }}
    {{- end }}
    {{- end }}
    {{- with .Values.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}

{{/*
How the probes ask grpc.health.v1.Health: the kubelet's own gRPC probe on a
plaintext port; `gantry health` with the Secret's CA (and, under mutual TLS,
the server's certificate as the client's) on a TLS port.
*/}}
{{- define "gantry.probe" -}}
{{- if .Values.tls.enabled -}}
exec:
  command:
    - /usr/local/bin/gantry
    - health
    - --addr
    - 127.0.0.1:{{ .Values.service.grpcPort }}
    - --ca-file
    - /etc/gantry-tls/ca.crt
    - --server-name
    - {{ default (include "gantry.fullname" .) .Values.tls.serverName }}
    {{- if .Values.tls.mutual }}
    - --cert-file
    - /etc/gantry-tls/tls.crt
    - --key-file
    - /etc/gantry-tls/tls.key
    {{- end }}
{{- else -}}
grpc:
  port: {{ .Values.service.grpcPort }}
{{- end -}}
{{- end }}

{{/*
Refuses values that cannot work, before anything renders.
*/}}
{{- define "gantry.checkMode" -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName (a kubernetes.io/tls Secret, or the one tls.certManager writes)" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) }}
{{- fail "auth.enabled needs auth.existingSecret (a Secret with tokens.toml and policy.toml; see docs/security.md)" }}
{{- end }}
{{- if eq .Values.mode "redis" }}
{{- if and (not .Values.redis.url) (not .Values.redis.cluster) }}
{{- fail "mode: redis needs redis.url or redis.cluster (the chart does not install Redis; see docs/cluster.md)" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.cluster }}
{{- fail "redis.url and redis.cluster cannot both be set: name one server or a cluster's seed nodes" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Keys of `config` that the chart sets itself (as GANTRY_* variables, which
would silently win over the file): refused with the value to use instead.
Everything else under config.server and config.storage is rendered.
*/}}
{{- define "gantry.refuseChartOwnedConfig" -}}
{{- $owned := dict
  "server" (dict
    "listen" "service.grpcPort"
    "metrics_listen" "service.metricsPort"
    "shutdown_grace" "shutdownGraceSeconds"
    "tls" "tls.*")
  "traces" (dict
    "otlp_http_listen" "service.otlpHttpPort")
  "storage" (dict
    "data_dir" "persistence.* (the volume is mounted at /data)"
    "backend" "mode (embedded or redis)"
    "redis" "redis.*") -}}
{{- range $section, $keys := $owned -}}
{{- $given := get $ $section -}}
{{- if $given -}}
{{- range $key, $instead := $keys -}}
{{- if hasKey $given $key -}}
{{- fail (printf "config.%s.%s is set by the chart; use %s instead (see docs/deploy.md)" $section $key $instead) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
