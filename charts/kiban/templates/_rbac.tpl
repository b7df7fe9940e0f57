{{/* RBAC rules, shared by the ClusterRole and the Role (rbac.yaml). */}}
{{- define "kiban.namespacedRules" }}
# the FoundationModel: watched and indexed by kopf, listed by the resync, patched once to remove
# the finalizer and annotations older versions had kopf write
- apiGroups: [kiban.dev]
  resources: [foundationmodels]
  verbs: [get, list, watch, patch]
- apiGroups: [kiban.dev]
  resources: [foundationmodels/status, foundationmodels/scale]
  verbs: [patch]
# owner references with blockOwnerDeletion (OpenShift enforces OwnerReferencesPermissionEnforcement)
- apiGroups: [kiban.dev]
  resources: [foundationmodels/finalizers]
  verbs: [update]
# children: server-side apply (create, patch), deleted when no longer wanted, indexed by kopf
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# the model-cache PVC is never deleted by the operator (weights may still be wanted)
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [podmonitors]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [route.openshift.io]
  resources: [routes]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [route.openshift.io]
  resources: [routes/custom-host]
  verbs: [create]
- apiGroups: [inference.networking.k8s.io]
  resources: [inferencepools]
  verbs: [get, list, watch, create, patch, delete]
{{- if .Capabilities.APIVersions.Has "leaderworkerset.x-k8s.io/v1" }}
# a model bigger than a node: one LeaderWorkerSet group per replica (kiban.builders.leaderworkerset);
# requested only where the API is served (install LeaderWorkerSet first, or helm upgrade after it)
- apiGroups: [leaderworkerset.x-k8s.io]
  resources: [leaderworkersets]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}
# pods: read only (status follows scheduling and readiness)
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Events on FoundationModels (ours and kopf's), core v1 only; a repeat is counted on the same
# Event (patch), as client-go's recorder does
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}
{{- define "kiban.leaseRules" }}
# the leader Lease, in the release namespace only
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update]
{{- end }}
{{- define "kiban.clusterReadRules" }}
# kopf watches CRDs to notice the resources it serves appear or change
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end }}
