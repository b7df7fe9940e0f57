"""The level-based resync: re-read every model, child and pod from the API, and reconcile all.

Why: kopf lists each resource once and then only watches. An event lost around an API outage
(a child deleted while the watch was down) stays lost in kopf's cache, and a pass reading that
cache sees a child that is gone and never re-creates it. The resync lists everything afresh
(one paginated list per resource, not per model), hands each model's fresh view to its next
pass (OperatorContext.listed, read by run._pass instead of the cache) and queues every model.

It runs on the leader only: when it becomes the leader, every `resync_seconds` (the
documented interval: operator_cli.DEFAULT_RESYNC_SECONDS, the chart's operator.resyncSeconds),
and when the API server answers again after a failure. It also removes what the operator no
longer uses from models that still carry it (kopf's finalizer `kiban.dev/finalizer`, which
made deleting a model or its namespace wait for a running operator).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from kiban.reconcile import observe
from kiban.reconcile.apply import legacy_cleanup_patch
from kiban.reconcile.logfmt import kv
from kiban.reconcile.pool import NORMAL

log = logging.getLogger("kiban.resync")


async def resync_once(context: Any, namespaces: Sequence[str]) -> int:
    """List the world, give each model's next pass the fresh view, queue every model (also
    those the cache still holds but the API no longer has). Returns how many were queued;
    raises when a list fails (the caller retries)."""
    started = time.perf_counter()
    world: observe.ListedWorld = await context.io(context.lister.list_world, list(namespaces))
    cached = set(context.indexes.get(observe.MODELS_INDEX) or {})
    refs = set(world.models) | cached
    for ref in refs:
        context.listed[ref] = world.view(ref)
    cleanups = [(ref, patch) for ref, body in world.models.items() if (patch := legacy_cleanup_patch(body))]
    if cleanups:
        await asyncio.gather(*(context.io(context.writer.remove_legacy, ref[0], ref[1], patch, priority=NORMAL)
                               for ref, patch in cleanups), return_exceptions=True)
        log.info(kv("Removed kopf's finalizer and annotations", models=len(cleanups)))
    if context.queue is not None:
        for ref in sorted(refs):
            context.queue.add(ref, context.indexes, "resync")
    log.info(kv("Resynced", models=len(world.models), children=world.child_count,
                seconds=round(time.perf_counter() - started, 2)))
    return len(refs)
