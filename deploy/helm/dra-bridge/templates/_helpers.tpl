{{/* Labels on every object: the kustomize base's part-of label plus Helm's release labels. */}}
{{- define "dra-bridge.labels" -}}
app.kubernetes.io/part-of: dra-bridge
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dra-bridge.selector" -}}
app.kubernetes.io/name: dra-bridge
app.kubernetes.io/component: webhook
{{- end }}

{{/* Namespaces neither webhook ever sees: the system ones and the webhook's own (no deadlock). */}}
{{- define "dra-bridge.namespaceSelector" -}}
namespaceSelector:
  matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [kube-system, kube-node-lease, kube-public, {{ .Release.Namespace }}]
  - key: dra-bridge.io/ignore
    operator: NotIn
    values: ["true"]
{{- end }}

{{- define "dra-bridge.systemNamespaceSelector" -}}
namespaceSelector:
  matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: [kube-system, kube-node-lease, kube-public, {{ .Release.Namespace }}]
{{- end }}

{{- define "dra-bridge.objectSelector" -}}
objectSelector:
  matchExpressions:
  - key: dra-bridge.io/ignore
    operator: NotIn
    values: ["true"]
{{- end }}

{{- define "dra-bridge.clientConfig" -}}
clientConfig:
  service: {name: dra-bridge, namespace: {{ .Release.Namespace }}, path: {{ .path }}, port: 443}
  {{- with .caBundle }}
  caBundle: {{ . }}
  {{- end }}
{{- end }}

{{/* The legacy-GPU matchConditions expression, the same text as deploy/base/webhooks.yaml. */}}
{{- define "dra-bridge.legacyExpression" -}}
(has(object.spec.initContainers) ? object.spec.containers + object.spec.initContainers : object.spec.containers)
  .exists(c, has(c.resources) &&
    [has(c.resources.limits) ? c.resources.limits : {}, has(c.resources.requests) ? c.resources.requests : {}]
      .exists(m, m.exists(k,
        k.startsWith('nvidia.com/') || k.startsWith('volcano.sh/vgpu') || k.startsWith('aliyun.com/gpu') ||
        k.startsWith('tencent.com/vcuda') || k == 'amd.com/gpu' || k.startsWith('gpu.intel.com/') ||
        k == 'google.com/tpu')))
|| (has(object.metadata.annotations) &&
    ('gpu-fraction' in object.metadata.annotations || 'gpu-memory' in object.metadata.annotations ||
     'gpu-fraction-num-devices' in object.metadata.annotations ||
     'gpu-fraction-container-name' in object.metadata.annotations))
{{- end }}
