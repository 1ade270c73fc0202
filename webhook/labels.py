"""Every label, annotation and ConfigMap data key dra-bridge reads or writes, in one place.

The translation core, the quota, the cluster adapters and the deploy manifests all name these; a
name kept twice drifts, so each lives here once and everything else imports it.
"""

from __future__ import annotations

# Objects dra-bridge owns (ResourceClaimTemplates, coordination Leases, DeviceClasses).
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "dra-bridge"

# ResourceClaimTemplates written by the conversion: named after their content.
SPEC_HASH_LABEL = "dra-bridge.io/spec-hash"
TEMPLATE_LABEL = "dra-bridge.io/template"
SUMMARY_ANNOTATION = "dra-bridge.io/summary"

# Pods: what a converted Pod asked for, and the opt-out (on the Pod or its Namespace).
CONVERTED_ANNOTATION = "dra-bridge.io/converted"
OPT_OUT_LABEL = "dra-bridge.io/ignore"

# DeviceClasses rendered from the catalogue.
DEVICE_KIND_LABEL = "dra-bridge.io/device-kind"
DRIVER_LABEL = "dra-bridge.io/driver"
DESCRIPTION_ANNOTATION = "dra-bridge.io/description"

# Admins' ConfigMaps: the label that marks them and the data key that holds the document.
POLICY_LABEL = "dra-bridge.io/policy"
POLICY_KEY = "policy.yaml"
CATALOGUE_LABEL = "dra-bridge.io/catalogue"
CATALOGUE_KEY = "catalogue.yaml"

# Quota coordination Leases (one per tenant).
TENANT_ANNOTATION = "dra-bridge.io/tenant"
INFLIGHT_ANNOTATION = "dra-bridge.io/in-flight"  # per replica: its admitted, not yet stored charges

# Replica membership Leases (one per replica): who is alive and where its peers reach it.
REPLICA_LABEL = "dra-bridge.io/replica-membership"
REPLICA_ANNOTATION = "dra-bridge.io/replica"
ADDRESS_ANNOTATION = "dra-bridge.io/peer-address"
FORWARDED_HEADER = "X-Dra-Bridge-Forwarded-By"  # a review one replica sent the replica that decides it
