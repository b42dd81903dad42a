{{/* Chart name, overridable with nameOverride. */}}
{{- define "failovervm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource-name prefix: fullnameOverride, else <release>-<chart> (or <release> if it contains the chart name). */}}
{{- define "failovervm.fullname" -}}
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

{{- define "failovervm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "failovervm.labels" -}}
helm.sh/chart: {{ include "failovervm.chart" . }}
app.kubernetes.io/name: {{ include "failovervm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: failovervm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "controller"). */}}
{{- define "failovervm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "failovervm.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "failovervm.componentLabels" -}}
{{ include "failovervm.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "failovervm.controllerName" -}}
{{- printf "%s-controller" (include "failovervm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "failovervm.agentName" -}}
{{- printf "%s-agent" (include "failovervm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "failovervm.webhookServiceName" -}}
{{- printf "%s-webhook" (include "failovervm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Secret with ca.crt/tls.crt/tls.key of the webhook server (Helm-generated or cert-manager's). */}}
{{- define "failovervm.webhookSecretName" -}}
{{- printf "%s-webhook-tls" (include "failovervm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "failovervm.certificateName" -}}
{{- printf "%s-webhook" (include "failovervm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* repository:tag, or repository@digest when a digest is set. */}}
{{- define "failovervm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The webhook Service's DNS names, as a list. */}}
{{- define "failovervm.webhookDNSNames" -}}
{{- $svc := include "failovervm.webhookServiceName" . -}}
{{- $ns := .Release.Namespace -}}
- {{ $svc }}
- {{ $svc }}.{{ $ns }}
- {{ $svc }}.{{ $ns }}.svc
- {{ $svc }}.{{ $ns }}.svc.{{ .Values.clusterDomain }}
{{- end -}}

{{/*
The Kubernetes version check (>= 1.34), done here instead of Chart.yaml's kubeVersion so that plain
`helm template` (no cluster, no --kube-version: Helm assumes its built-in v1.20.0) still renders.
It fails whenever the version is known: against a cluster (install, upgrade, --dry-run=server:
`lookup` reaches it), or a `--kube-version` other than Helm's built-in default.
*/}}
{{- define "failovervm.kubeVersionCheck" -}}
{{- $v := .Capabilities.KubeVersion.Version -}}
{{- $cluster := lookup "v1" "Namespace" "" "kube-system" -}}
{{- if and (not (semverCompare ">=1.34.0-0" $v)) (or $cluster (ne $v "v1.20.0")) -}}
{{- fail (printf "failovervm-operator needs Kubernetes >= 1.34 (kubeVersion), found %s" $v) -}}
{{- end -}}
{{- end -}}
