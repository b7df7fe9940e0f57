"""The model-cache PersistentVolumeClaim, when spec.cache.type is pvc (one claim shared by all replicas)."""

from __future__ import annotations

from typing import Any

from kiban.api.v1alpha1 import CacheVolumeType, FoundationModel
from kiban.builders.common import object_meta, with_spec_hash
from kiban.builders.names import cache_claim_name


def build_cache_pvc(fm: FoundationModel) -> dict[str, Any] | None:
    """None when the cache is an emptyDir."""
    cache = fm.spec.cache
    if cache.type is not CacheVolumeType.pvc:
        return None
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": cache.size}},
        "volumeMode": "Filesystem",
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(fm, cache_claim_name(fm.name)),
        "spec": spec,
    }
    return with_spec_hash(claim)
