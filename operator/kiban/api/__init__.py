"""The FoundationModel API (kiban.dev/v1alpha1): pydantic models are the one source of the CRD schema."""

from kiban.api.v1alpha1 import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    Condition,
    ConditionType,
    FoundationModel,
    FoundationModelSpec,
    FoundationModelStatus,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "Condition",
    "ConditionType",
    "FoundationModel",
    "FoundationModelSpec",
    "FoundationModelStatus",
]
