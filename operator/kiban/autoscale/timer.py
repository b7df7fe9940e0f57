"""The kopf side of the autoscaler: the timer's body and the per-operator Autoscaler it uses.

kiban.handlers registers one kopf timer per FoundationModel, `autoscale`, every
OperatorConfig.autoscale_interval_seconds (KIBAN_AUTOSCALE_INTERVAL_SECONDS, default 15 s),
calling kiban.autoscale.loop.tick, which lands here. Leader only: kopf runs timers only in the
active peer; with several operator replicas and peering (`kiban run --peering NAME`), the
paused replicas run no timer, so one autoscaler decides. Each model's timer runs its passes one
after another (kopf never overlaps a handler with itself), and different models run concurrently
on one event loop, so the Autoscaler's per-model memory needs no lock.

The Autoscaler belongs to the operator instance: it is kept on the OperatorContext (kopf's memo
carries that), created from the context's config on first use; a test or an embedding may
install its own first with `install(context, autoscaler)` (e.g. a shorter rate window).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kiban.autoscale.loop import Autoscaler, AutoscaleSettings, PassResult

CONTEXT_ATTRIBUTE = "autoscaler"


def install(context: Any, autoscaler: Autoscaler) -> Autoscaler:
    """Give this operator instance its Autoscaler (before the operator starts)."""
    setattr(context, CONTEXT_ATTRIBUTE, autoscaler)
    return autoscaler


def autoscaler_for(context: Any) -> Autoscaler:
    """The operator instance's Autoscaler, created from its config the first time."""
    existing = getattr(context, CONTEXT_ATTRIBUTE, None)
    if existing is None:
        existing = install(context, Autoscaler.from_settings(AutoscaleSettings.from_config(context.config)))
    return existing


async def on_timer(*, body: Mapping[str, Any], context: Any, indexes: Mapping[str, Any]) -> PassResult:
    """One autoscale pass for the model kopf's timer fired for."""
    return await autoscaler_for(context).run_once(context, body, indexes)
