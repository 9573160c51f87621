{{/* Names and labels. */}}
{{- define "shadowgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "shadowgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shadowgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "shadowgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shadowgate
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "worker") */}}
{{- define "shadowgate.selector" -}}
app.kubernetes.io/name: {{ include "shadowgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shadowgate.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "shadowgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "shadowgate.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* The SHADOWGATE_* settings every process reads. Only names `shadowgate config show` lists. */}}
{{- define "shadowgate.env" -}}
- name: SHADOWGATE_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrap is required" .Values.kafka.bootstrap | quote }}
- name: SHADOWGATE_REDIS_URL
{{- if .Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else }}
  value: {{ required "redis.url or redis.existingSecret is required" .Values.redis.url | quote }}
{{- end }}
- name: SHADOWGATE_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
- name: SHADOWGATE_KEYS_DIR
  value: /keys/ring
{{- if .Values.policy }}
- name: SHADOWGATE_POLICY_PATH
  value: /etc/shadowgate/policy/policy.yaml
{{- end }}
{{- if .Values.catalog }}
- name: SHADOWGATE_CATALOG_PATH
  value: /etc/shadowgate/policy/feature_catalog.yaml
{{- end }}
{{- range $name, $topic := .Values.topics }}
{{- if $topic }}
- name: SHADOWGATE_TOPICS__{{ $name | upper }}
  value: {{ $topic | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
# the image's user has no home: Faust's data directory and matplotlib's cache go to the /tmp emptyDir
- name: HOME
  value: /tmp
{{- end -}}

{{/*
The keyring: the Secret (read-only) copied by an init container into a memory-backed volume with the modes the
keyring accepts (it refuses key files or directories others can write, and private keys not 0600; a Secret
volume's directories are world-writable or 0755). (dict "root" $ "items" list)
*/}}
{{- define "shadowgate.keysInit" -}}
- name: keyring
  image: {{ include "shadowgate.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["/bin/sh", "-ec"]
  args:
    - |
      umask 077
      mkdir -p /keys/ring/private
      cp -RL /secrets/keys/* /keys/ring/
      find /keys/ring -type d -exec chmod 0700 {} +
      find /keys/ring -type f -exec chmod 0644 {} +
      find /keys/ring/private -type f -exec chmod 0600 {} +
      echo "keyring: $(find /keys/ring -type f | wc -l) file(s)"
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  resources:
    requests: {cpu: 10m, memory: 16Mi}
    limits: {memory: 64Mi}
  volumeMounts:
    - name: keys-secret
      mountPath: /secrets/keys
      readOnly: true
    - name: keyring
      mountPath: /keys
{{- end -}}

{{- define "shadowgate.keysVolumes" -}}
- name: keys-secret
  secret:
    secretName: {{ required "keys.secretName is required" .root.Values.keys.secretName }}
    defaultMode: {{ .root.Values.keys.defaultMode }}
    {{- with .items }}
    items:
      {{- toYaml . | nindent 6 }}
    {{- end }}
- name: keyring
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
- name: tmp
  emptyDir: {}
{{- if or .root.Values.policy .root.Values.catalog }}
- name: policy
  configMap:
    name: {{ include "shadowgate.fullname" .root }}-policy
{{- end }}
{{- end -}}

{{- define "shadowgate.mounts" -}}
- name: keyring
  mountPath: /keys
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if or .Values.policy .Values.catalog }}
- name: policy
  mountPath: /etc/shadowgate/policy
  readOnly: true
{{- end }}
{{- end -}}

{{/* Liveness /healthz and readiness /readyz on a named port: (dict "port" "metrics") */}}
{{- define "shadowgate.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: 5
  failureThreshold: 60
{{- end -}}

{{- define "shadowgate.podExtras" -}}
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
{{- end -}}
