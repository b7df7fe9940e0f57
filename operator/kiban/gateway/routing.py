"""Which engine pod serves one request (pure): the one routing rule of Kiban.

The gateway (kiban.gateway.server), the benchmark's fleet (kiban_dev.benchmark.fleet) and,
through the gateway process, the demo all route with these functions, so what the benchmark
measures is what the gateway does.

- `least_outstanding`: the candidate with the fewest requests in flight, ties to the first
  listed (the oldest replica). The default, as Envoy's least-request and every inference
  gateway's queue scorer do; kube-proxy's random pick would queue behind a busy pod.
- `prefix_key` + `HashRing` + `bounded_load_pick`: prefix affinity, i.e. consistent hashing
  with bounded loads (Mirrokni, Thorup and Zadimoghaddam 2018; KubeAI's "CHWBL"). Requests
  whose prompts open alike go to the same pod, where vLLM's prefix cache already holds their
  KV blocks, unless that pod carries more than `load_factor` x the mean load (counting this
  request); then the ring's next pod under the bound takes it. A pod joining or leaving moves
  only the keys next to it on the ring.
- `serving_endpoints`: a LoRA adapter name only reaches pods that load that adapter.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

VIRTUAL_NODES = 100  # ring points per pod: the load spread of a ring with n pods is within ~10 %
DEFAULT_PREFIX_CHARACTERS = 512  # about 128 tokens of English text at ~4 characters a token
DEFAULT_LOAD_FACTOR = 1.25  # a pod may carry 25 % above the mean before its keys spill over

LEAST_OUTSTANDING = "least_outstanding"
PREFIX_AFFINITY = "prefix_affinity"
PREFIX_OVERFLOW = "prefix_overflow"  # the key's own pod was above the load bound


@dataclass(frozen=True)
class Endpoint:
    """One ready engine pod as the router sees it."""

    name: str  # the pod's name: the identity loads and the ring are keyed on
    address: str  # host:port
    adapters: frozenset[str] = frozenset()  # LoRA adapter names this pod loads (--lora-modules)

    @property
    def url(self) -> str:
        return f"http://{self.address}"


def least_outstanding(candidates: Sequence[T], load: Callable[[T], int]) -> T | None:
    """The candidate with the smallest load; ties go to the first listed; None when empty."""
    best: T | None = None
    best_load = 0
    for candidate in candidates:
        value = load(candidate)
        if best is None or value < best_load:
            best, best_load = candidate, value
    return best


def serving_endpoints(endpoints: Sequence[Endpoint], requested: str, adapter_names: Collection[str]) -> list[Endpoint]:
    """The endpoints that can serve the OpenAI `model` name `requested`: every one for the base
    model, only those loading it for a LoRA adapter name."""
    if requested not in adapter_names:
        return list(endpoints)
    return [e for e in endpoints if requested in e.adapters]


def _text(value: Any) -> str:
    """The text of an OpenAI content field: a string, or a list of parts with `text`."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(part.get("text", "") if isinstance(part, Mapping) else str(part) for part in value)
    return "" if value is None else str(value)


def prefix_key(body: Mapping[str, Any], characters: int = DEFAULT_PREFIX_CHARACTERS) -> str | None:
    """The text a request's affinity is keyed on, or None when it has no prompt.

    Completions: the prompt's first `characters` characters. Chat: the system messages and
    the first user message, cut the same way: that opening is what every later turn of the
    conversation repeats, so a conversation keeps its key as it grows (the whole transcript's
    first characters would change while the transcript is shorter than the cut). Characters,
    not tokens: the gateway has no tokenizer, and the opening characters decide the opening
    tokens.
    """
    if characters < 1:
        raise ValueError(f"characters must be >= 1, got {characters}")
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        opening: list[str] = []
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            role = message.get("role")
            opening.append(f"{role}:{_text(message.get('content'))}\n")
            if role == "user":
                break
        text = "".join(opening)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list):  # a batch of prompts or one prompt as token ids: its opening
            prompt = prompt[0] if prompt and isinstance(prompt[0], (str, list)) else prompt
        text = _text(prompt) if not isinstance(prompt, list) else ",".join(map(str, prompt))
    return text[:characters] or None


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and run (Python's hash() is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class HashRing:
    """A consistent-hash ring over endpoint names, VIRTUAL_NODES points each."""

    names: tuple[str, ...]
    points: tuple[int, ...] = field(repr=False, default=())
    owners: tuple[str, ...] = field(repr=False, default=())

    @classmethod
    def of(cls, names: Collection[str], virtual_nodes: int = VIRTUAL_NODES) -> HashRing:
        ring = sorted((stable_hash(f"{name}#{i}"), name) for name in set(names) for i in range(virtual_nodes))
        return cls(tuple(sorted(set(names))), tuple(p for p, _ in ring), tuple(n for _, n in ring))

    def walk(self, key_hash: int) -> Iterator[str]:
        """Each name once, clockwise from the key's point."""
        if not self.points:
            return
        start = bisect.bisect_left(self.points, key_hash)
        seen: set[str] = set()
        count = len(self.points)
        for offset in range(count):
            name = self.owners[(start + offset) % count]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == len(self.names):
                    return


def load_bound(total_load: int, endpoints: int, load_factor: float) -> int:
    """Most requests one endpoint may hold after taking this one: ceil(c x (total + 1) / n)."""
    if endpoints < 1:
        raise ValueError("no endpoints")
    return max(1, math.ceil(load_factor * (total_load + 1) / endpoints - 1e-9))


def bounded_load_pick(ring: HashRing, key: str, candidates: Collection[str], load: Mapping[str, int],
                      load_factor: float = DEFAULT_LOAD_FACTOR) -> tuple[str | None, str]:
    """(endpoint name, decision) for a request keyed `key`: the first ring owner from the key's
    point that is a candidate and under the load bound. PREFIX_AFFINITY when that is the key's
    own (first candidate) owner, PREFIX_OVERFLOW when the bound moved it on."""
    if load_factor < 1:
        raise ValueError(f"load_factor must be >= 1, got {load_factor}")
    wanted = set(candidates)
    if not wanted:
        return None, PREFIX_AFFINITY
    bound = load_bound(sum(load.get(n, 0) for n in wanted), len(wanted), load_factor)
    first = True
    for name in ring.walk(stable_hash(key)):
        if name not in wanted:
            continue
        if load.get(name, 0) + 1 <= bound:
            return name, PREFIX_AFFINITY if first else PREFIX_OVERFLOW
        first = False
    # candidates the ring does not know (it is rebuilt when endpoints change): least loaded
    return least_outstanding(sorted(wanted), lambda n: load.get(n, 0)), PREFIX_OVERFLOW


@dataclass(frozen=True)
class RoutingPolicy:
    """How one model's requests are routed (from its spec.exposure.gateway)."""

    prefix_affinity: bool = False
    prefix_characters: int = DEFAULT_PREFIX_CHARACTERS
    load_factor: float = DEFAULT_LOAD_FACTOR


def choose(endpoints: Sequence[Endpoint], load: Mapping[str, int], body: Mapping[str, Any],
           policy: RoutingPolicy, ring: HashRing | None = None) -> tuple[Endpoint | None, str]:
    """(endpoint, decision) for one request over endpoints that can serve it."""
    if not endpoints:
        return None, LEAST_OUTSTANDING
    if policy.prefix_affinity:
        key = prefix_key(body, policy.prefix_characters)
        if key is not None:
            by_name = {e.name: e for e in endpoints}
            ring = ring if ring is not None else HashRing.of(by_name)
            name, decision = bounded_load_pick(ring, key, by_name, load, policy.load_factor)
            if name is not None:
                return by_name[name], decision
    return least_outstanding(endpoints, lambda e: load.get(e.name, 0)), LEAST_OUTSTANDING
