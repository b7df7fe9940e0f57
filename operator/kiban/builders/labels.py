"""Labels and annotations shared by every object a FoundationModel owns."""

from __future__ import annotations

from kiban.api.v1alpha1 import FoundationModel
from kiban.builders.names import label_value

MODEL_LABEL = "kiban.dev/model"
SPEC_HASH_ANNOTATION = "kiban.dev/spec-hash"
ACCELERATOR_PROFILE_ANNOTATION = "kiban.dev/accelerator-profile"
MODEL_PARAMETERS_ANNOTATION = "kiban.dev/model-parameters"
SERVED_MODEL_NAME_ANNOTATION = "kiban.dev/served-model-name"
COMPONENT = "model-server"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kiban"
INSTANCE_LABEL = "app.kubernetes.io/instance"
PART_OF_LABEL = "app.kubernetes.io/part-of"


def selector_labels(fm: FoundationModel) -> dict[str, str]:
    """The engine pods' identity; immutable in a Deployment's selector, so never add to it."""
    return {MODEL_LABEL: label_value(fm.name), "app.kubernetes.io/component": COMPONENT}


def common_labels(fm: FoundationModel) -> dict[str, str]:
    """Recommended app.kubernetes.io labels plus the selector labels."""
    return {
        "app.kubernetes.io/name": "vllm",
        INSTANCE_LABEL: label_value(fm.name),
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        PART_OF_LABEL: "kiban",
        **selector_labels(fm),
    }


def selector_string(fm: FoundationModel) -> str:
    """status.selector for the scale subresource: 'k=v,k=v' in sorted order."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(fm).items()))
