{{/* The app.kubernetes.io/name label, which the Deployment selects its pods by. */}}
{{- define "tfjob-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: fullnameOverride, else the release name when it contains the chart's
name, else "<release>-<name>". */}}
{{- define "tfjob-operator.fullname" -}}
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

{{/* The pods' labels and the Deployment's selector. */}}
{{- define "tfjob-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tfjob-operator.name" . }}
{{- end }}

{{/* Every object's labels: deploy/'s, plus the release's (Helm's own). */}}
{{- define "tfjob-operator.labels" -}}
{{ include "tfjob-operator.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The operator's RBAC rules, the same in the ClusterRole and in a namespaced Role. Exactly
what the operator calls (deploy/cluster-role.yaml says why each is there):
- tfjobs: watched; deleted for ttlSecondsAfterFinished; get before creating pods while the
  TFJob watch is catching up after a failure, and after a status write refused as stale.
  tfjobs/status: JSON merge patch.
  tfjobs/finalizers: the API server requires update on it to set blockOwnerDeletion on the
  owner references of the pods and services.
- pods, services: watched (label-selected), created, deleted; a finished job's cleanup
  deleted as a collection by the job's labels (one request per kind); get only after a
  create answered 409, to see whose object it is.
- events.k8s.io events: created, one per happening.
- scheduling.k8s.io podgroups (only with --gang-scheduling=native): watched, created before
  a job's pods, deleted when it finishes or is suspended; get only after a create answered
  409.
- kueue.x-k8s.io (only with kueueWorkloads: operator): workloads watched, created, patched,
  get after a 409; workloads/status patched; resourceflavors and workloadpriorityclasses
  read. tfjobs patch: the job suspended and started on Kueue's admission. */}}
{{- define "tfjob-operator.rules" -}}
- apiGroups: ["kubeflow.org"]
  resources: ["tfjobs"]
  verbs: ["get", "list", "watch", "delete", "patch"]
- apiGroups: ["kubeflow.org"]
  resources: ["tfjobs/status"]
  verbs: ["patch"]
- apiGroups: ["kubeflow.org"]
  resources: ["tfjobs/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods", "services"]
  verbs: ["get", "list", "watch", "create", "delete", "deletecollection"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["scheduling.k8s.io"]
  resources: ["podgroups"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads/status"]
  verbs: ["patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["resourceflavors", "workloadpriorityclasses"]
  verbs: ["get"]
{{- end }}

{{/* The image reference: repository@digest, else repository:tag. */}}
{{- define "tfjob-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Values that cannot work together stop the render. */}}
{{- define "tfjob-operator.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled: without it every replica reconciles every job" }}
{{- end }}
{{- if not (has .Values.gangScheduling (list "none" "native")) }}
{{- fail (printf "gangScheduling must be none or native, not %q" .Values.gangScheduling) }}
{{- end }}
{{- if not (has .Values.kueueWorkloads (list "kueue" "operator")) }}
{{- fail (printf "kueueWorkloads must be kueue or operator, not %q" .Values.kueueWorkloads) }}
{{- end }}
{{- if not (has .Values.logFormat (list "json" "text")) }}
{{- fail (printf "logFormat must be json or text, not %q" .Values.logFormat) }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled" }}
{{- end }}
{{- end }}
