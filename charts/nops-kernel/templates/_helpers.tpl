{{/*
Chart name, truncated to the 63 characters a DNS-1123 label allows.
*/}}
{{- define "nops-kernel.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full resource name: "<release>-<chart>", or the release name when it already contains the chart
name. Truncated to 52 characters because the StatefulSet controller appends "-<ordinal>" and a
revision hash to pod labels, which must stay within 63.
*/}}
{{- define "nops-kernel.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label value.
*/}}
{{- define "nops-kernel.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select this release's pods. They never change after install: a StatefulSet's
selector is immutable.
*/}}
{{- define "nops-kernel.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nops-kernel.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "nops-kernel.labels" -}}
helm.sh/chart: {{ include "nops-kernel.chart" . }}
{{ include "nops-kernel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nops
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "nops-kernel.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nops-kernel.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Kernel image reference: a digest pins the image; otherwise the tag, defaulting to appVersion.
*/}}
{{- define "nops-kernel.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
JetStream domain of the leaf node: nats.jetstream.domain, or the edge id.
*/}}
{{- define "nops-kernel.jetstreamDomain" -}}
{{- default .Values.edgeId .Values.nats.jetstream.domain }}
{{- end }}

{{/*
Container security context required by the "restricted" Pod Security Standard, shared by the
kernel and the NATS sidecar.
*/}}
{{- define "nops-kernel.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The sidecar's NOPS_HUB_LEAF_URLS: every hub node's leafnode URL as a NATS list. With auth
"password" each URL gets this edge's user and $(NOPS_HUB_SECRET), which Kubernetes expands from
the variable defined before it (the Secret's value), so the secret is in no rendered manifest.
*/}}
{{- define "nops-kernel.hubLeafUrls" -}}
{{- $urls := .Values.nats.hub.urls | toJson }}
{{- if eq .Values.nats.hub.auth "password" }}
{{- $user := default (printf "edge-%s" .Values.edgeId) .Values.nats.hub.password.user }}
{{- $urls | replace "://" (printf "://%s:$(NOPS_HUB_SECRET)@" $user) }}
{{- else }}
{{- $urls }}
{{- end }}
{{- end }}
