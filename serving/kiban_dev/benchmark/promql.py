"""A Prometheus stand-in for the benchmark: scraped samples in, PromQL answers out, as Prometheus 2.42 gives them.

The benchmark's fleet scrapes every replica's vLLM series into a `SampleStore`, and
`PromQLStandIn` answers the operator's own collector (kiban.autoscale.collector's
`PrometheusQuery` protocol) from those samples, so Kiban sees in the benchmark exactly what it
would see in production. The queries are parsed with `promql-parser` (a maintained parser of
Prometheus's grammar, MIT) and evaluated here for the subset docs/benchmark.md and
COORDINATION.md name:

- instant selectors with `=`, `!=`, `=~`, `!~` matchers: the newest sample of each series at or
  before the evaluation time, within the 5-minute lookback, unless the series was missing from
  its target's newest scrape or the target went away since (Prometheus's staleness markers);
- range selectors `[d]` inside `rate`, `increase`, `delta` (Prometheus's extrapolation to the
  range's edges, counter resets, the zero-point rule for counters) and `avg_over_time`,
  `max_over_time`, `min_over_time`, `sum_over_time`, `count_over_time`; the range holds the
  samples with t - d <= time <= t (closed at both ends, as in Prometheus 2.x);
- `histogram_quantile(q, ...)` (linear within a bucket, the highest finite bound for +Inf, counts
  made monotonic, as Prometheus's bucketQuantile);
- `sum`, `max`, `min`, `count`, `avg` with `by (...)` or `without (...)`;
- `+ - * /` between two vectors (one-to-one matching on all labels but the name, or
  `on`/`ignoring`), a vector and a scalar, or two scalars; `or`; number literals; unary minus.

Anything else is refused with PrometheusUnavailable(QUERY_FAILED), naming the construct, so a
collector query outside the subset fails loudly in the benchmark instead of being misread.
tests/integration/test_promql_standin.py checks every collector query against a real Prometheus.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import promql_parser as pp

from kiban.autoscale.collector import QUERY_FAILED, PrometheusUnavailable, Sample

LOOKBACK_MS = 300_000  # Prometheus's default query.lookback-delta


def to_ms(time_s: float) -> int:
    """Prometheus keeps times as integer milliseconds; so does the store (exact durations)."""
    return int(round(time_s * 1000.0))
NAME = "__name__"

LabelSet = tuple[tuple[str, str], ...]  # sorted (name, value) pairs, __name__ included


def label_set(labels: Mapping[str, str]) -> LabelSet:
    return tuple(sorted(labels.items()))


class _Labels:
    """Label sets interned as integers, with the derived sets evaluation needs memoised."""

    def __init__(self) -> None:
        self.ids: dict[LabelSet, int] = {}
        self.sets: list[LabelSet] = []
        self.dicts: list[dict[str, str]] = []
        self._derived: dict[tuple, int] = {}
        self._match: dict[tuple, np.ndarray] = {}

    def intern(self, labels: LabelSet) -> int:
        found = self.ids.get(labels)
        if found is None:
            found = self.ids[labels] = len(self.sets)
            self.sets.append(labels)
            self.dicts.append(dict(labels))
        return found

    def derive(self, ids: np.ndarray, kind: str, names: tuple[str, ...] = ()) -> np.ndarray:
        """Per id, the id of a derived label set: 'drop' (without __name__), 'keep' (only `names`),
        'without' (all but `names` and __name__)."""
        derived = self._derived
        out = np.empty(len(ids), dtype=np.int64)
        for i, label_id in enumerate(ids.tolist()):
            key = (kind, names, label_id)
            value = derived.get(key)
            if value is None:
                pairs = self.sets[label_id]
                if kind == "drop":
                    kept = tuple(p for p in pairs if p[0] != NAME)
                elif kind == "keep":
                    kept = tuple(p for p in pairs if p[0] in names)
                else:
                    kept = tuple(p for p in pairs if p[0] not in names and p[0] != NAME)
                value = derived[key] = self.intern(kept)
            out[i] = value
        return out

    def matches(self, ids: np.ndarray, matchers: tuple[tuple[str, str, str], ...]) -> np.ndarray:
        """Per id, whether its labels pass every (op, name, value) matcher."""
        if not matchers:
            return np.ones(len(ids), dtype=bool)
        table = self._match.get(matchers)
        if table is None or len(table) < len(self.sets):
            old = 0 if table is None else len(table)
            extra = np.array([_passes(self.dicts[i], matchers) for i in range(old, len(self.sets))], dtype=bool)
            table = extra if table is None else np.concatenate([table, extra])
            self._match[matchers] = table
        return table[ids]


def _passes(labels: Mapping[str, str], matchers: tuple[tuple[str, str, str], ...]) -> bool:
    import re

    for op, name, value in matchers:
        have = labels.get(name, "")
        if op == "=" and have != value:
            return False
        if op == "!=" and have == value:
            return False
        if op == "=~" and not re.fullmatch(value, have):
            return False
        if op == "!~" and re.fullmatch(value, have):
            return False
    return True


@dataclass
class _Records:
    """One metric name's samples: per scrape record (time in ms, target, label ids, values)."""

    times: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)


KEEP_S = 900.0  # seconds of samples the fleet's store keeps (Prometheus keeps days; every default window fits)


class SampleStore:
    """Scraped samples, as Prometheus's head block holds them, for the last `keep_s` seconds.

    A scrape adds one record per metric name and target; a target that goes away (a removed
    replica) is dropped at a time, after which its series are stale for instant selectors.
    Records must arrive in time order."""

    def __init__(self, keep_s: float = KEEP_S) -> None:
        self.keep_s = keep_s
        self.labels = _Labels()
        self._names: dict[str, _Records] = {}
        self._targets: dict[str, int] = {}
        self._scrapes: list[list[int]] = []  # per target, its scrape times (ms)
        self._dropped: list[float] = []  # per target, when it went away in ms (inf: still there)
        self.latest_s = -math.inf

    def target(self, name: str) -> int:
        found = self._targets.get(name)
        if found is None:
            found = self._targets[name] = len(self._scrapes)
            self._scrapes.append([])
            self._dropped.append(math.inf)
        return found

    def scrape(self, target: str, time_s: float, families: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """One scrape of `target` at time_s: per metric name, its label ids (`intern` them once) and values."""
        index = self.target(target)
        times = self._scrapes[index]
        ms = to_ms(time_s)
        if times and ms <= times[-1]:
            raise ValueError(f"scrape of {target} at {time_s} is not after its previous one at {times[-1] / 1000}")
        times.append(ms)
        self._dropped[index] = math.inf
        for name, ids, values in families:
            records = self._names.get(name)
            if records is None:
                records = self._names[name] = _Records()
            if records.times and ms < records.times[-1]:
                raise ValueError(f"scrape at {time_s} arrived after a later one of another target (keep time order)")
            records.times.append(ms)
            records.targets.append(index)
            records.ids.append(ids)
            records.values.append(values)
        self.latest_s = max(self.latest_s, time_s)
        self._prune(time_s)

    def scrape_series(self, target: str, time_s: float, series: Iterable[tuple[Mapping[str, str], float]]) -> None:
        """scrape() from (labels with __name__, value) pairs: the general, slower form."""
        by_name: dict[str, tuple[list[int], list[float]]] = {}
        for labels, value in series:
            ids, values = by_name.setdefault(labels[NAME], ([], []))
            ids.append(self.labels.intern(label_set(labels)))
            values.append(float(value))
        self.scrape(target, time_s, ((n, np.array(i, dtype=np.int64), np.array(v, dtype=float))
                                     for n, (i, v) in by_name.items()))

    def drop(self, target: str, time_s: float) -> None:
        """The target went away at time_s: Prometheus writes staleness markers for its series."""
        self._dropped[self.target(target)] = to_ms(time_s)

    def _prune(self, now_s: float) -> None:
        horizon = to_ms(now_s - self.keep_s)
        for records in self._names.values():
            if records.times and records.times[0] < horizon:
                cut = bisect.bisect_left(records.times, horizon)
                del records.times[:cut], records.targets[:cut], records.ids[:cut], records.values[:cut]

    # -- selection -----------------------------------------------------------------------------

    def _window(self, name: str, low_ms: int, high_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(times in ms, targets, ids, values) of every sample of `name` with low <= time <= high."""
        records = self._names.get(name)
        if records is None or not records.times:
            empty = np.empty(0)
            return empty, empty.astype(np.int64), empty.astype(np.int64), empty
        lo = bisect.bisect_left(records.times, low_ms)
        hi = bisect.bisect_right(records.times, high_ms)
        if lo >= hi:
            empty = np.empty(0)
            return empty, empty.astype(np.int64), empty.astype(np.int64), empty
        sizes = [len(a) for a in records.ids[lo:hi]]
        times = np.repeat(np.array(records.times[lo:hi], dtype=np.int64), sizes)
        targets = np.repeat(np.array(records.targets[lo:hi], dtype=np.int64), sizes)
        return times, targets, np.concatenate(records.ids[lo:hi]), np.concatenate(records.values[lo:hi])

    def instant(self, name: str, matchers: tuple, time_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(label ids, values) an instant selector gives at time_s (lookback and staleness applied)."""
        t = to_ms(time_s)
        times, targets, ids, values = self._window(name, t - LOOKBACK_MS, t)
        if not len(ids):
            return ids, values
        newest = {}
        for index in np.unique(targets).tolist():
            scrapes = self._scrapes[index]
            k = bisect.bisect_right(scrapes, t) - 1
            dropped = self._dropped[index]
            if k >= 0 and not (scrapes[k] < dropped <= t):
                newest[index] = scrapes[k]
        latest = np.array([newest.get(x, -1) for x in targets.tolist()], dtype=np.int64)
        keep = (times == latest) & self.labels.matches(ids, matchers)
        return ids[keep], values[keep]

    def ranged(self, name: str, matchers: tuple, low_ms: int, high_ms: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times in ms, label ids, values) of the matching samples in [low, high], by series then time."""
        times, _, ids, values = self._window(name, low_ms, high_ms)
        keep = self.labels.matches(ids, matchers)
        times, ids, values = times[keep], ids[keep], values[keep]
        order = np.lexsort((times, ids))
        return times[order], ids[order], values[order]


# -- evaluation ----------------------------------------------------------------------------------


@dataclass
class _Vector:
    ids: np.ndarray  # label ids
    values: np.ndarray


class _Scalar(float):
    pass


def _fail(message: str) -> PrometheusUnavailable:
    return PrometheusUnavailable(QUERY_FAILED, f"the benchmark's PromQL stand-in cannot evaluate this: {message}")


_MATCH_OPS = {"MatchOp.Equal": "=", "MatchOp.NotEqual": "!=", "MatchOp.Re": "=~", "MatchOp.NotRe": "!~"}


def _matchers(selector: pp.VectorSelector) -> tuple[tuple[str, str, str], ...]:
    if selector.offset is not None or selector.at is not None:
        raise _fail(f"offset/@ modifiers ({selector})")
    out = []
    for matcher in selector.matchers.matchers:
        op = _MATCH_OPS.get(str(matcher.op))
        if op is None:
            raise _fail(f"matcher {matcher}")
        if matcher.name == NAME:
            raise _fail("__name__ matchers")
        out.append((op, matcher.name, matcher.value))
    if selector.matchers.or_matchers:
        raise _fail("or-matchers")
    return tuple(out)


RANGE_FUNCTIONS = {"rate", "increase", "delta", "avg_over_time", "max_over_time", "min_over_time",
                   "sum_over_time", "count_over_time"}
AGGREGATIONS = {"sum", "max", "min", "count", "avg"}
ARITHMETIC = {"+", "-", "*", "/"}


class PromQLStandIn:
    """kiban.autoscale.collector.PrometheusQuery over a SampleStore: `query(promql, time_s)`."""

    def __init__(self, store: SampleStore) -> None:
        self.store = store
        self._parsed: dict[str, pp.Expr] = {}

    def query(self, promql: str, time_s: float) -> list[Sample]:
        expr = self._parsed.get(promql)
        if expr is None:
            try:
                expr = self._parsed[promql] = pp.parse(promql)
            except Exception as exc:  # the parser raises its own error type
                raise PrometheusUnavailable(QUERY_FAILED, f"bad_data: {exc}") from None
        with np.errstate(divide="ignore", invalid="ignore"):
            result = self._eval(expr, time_s)
        if isinstance(result, _Scalar):
            return [Sample({}, float(result), time_s)]
        dicts = self.store.labels.dicts
        return [Sample(dicts[i], float(v), time_s) for i, v in zip(result.ids.tolist(), result.values.tolist())]

    # every node evaluates to a _Vector or a _Scalar
    def _eval(self, expr: pp.Expr, t: float):
        if isinstance(expr, pp.ParenExpr):
            return self._eval(expr.expr, t)
        if isinstance(expr, pp.NumberLiteral):
            return _Scalar(expr.val)
        if isinstance(expr, pp.VectorSelector):
            ids, values = self.store.instant(expr.name, _matchers(expr), t)
            return _Vector(ids, values)
        if isinstance(expr, pp.UnaryExpr):
            inner = self._eval(expr.expr, t)
            if isinstance(inner, _Scalar):
                return _Scalar(-inner)
            return _Vector(self.store.labels.derive(inner.ids, "drop"), -inner.values)
        if isinstance(expr, pp.Call):
            return self._call(expr, t)
        if isinstance(expr, pp.AggregateExpr):
            return self._aggregate(expr, t)
        if isinstance(expr, pp.BinaryExpr):
            return self._binary(expr, t)
        raise _fail(f"{type(expr).__name__} ({expr})")

    def _call(self, expr: pp.Call, t: float):
        name = expr.func.name
        if name in RANGE_FUNCTIONS:
            (arg,) = expr.args
            if not isinstance(arg, pp.MatrixSelector):
                raise _fail(f"{name} of {type(arg).__name__}")
            selector = arg.vector_selector
            range_ms = to_ms(arg.range.total_seconds())
            if range_ms > to_ms(self.store.keep_s):  # Prometheus keeps days: a cut range would be a silent lie
                raise _fail(f"a range of {arg.range.total_seconds():g} s, longer than the {self.store.keep_s:g} s "
                            f"of samples this stand-in keeps")
            t_ms = to_ms(t)
            times, ids, values = self.store.ranged(selector.name, _matchers(selector), t_ms - range_ms, t_ms)
            return _range_function(name, times, ids, values, t_ms, range_ms, self.store.labels)
        if name == "histogram_quantile":
            q, inner = expr.args
            q = self._eval(q, t)
            vector = self._eval(inner, t)
            if not isinstance(q, _Scalar) or not isinstance(vector, _Vector):
                raise _fail("histogram_quantile needs a scalar and a vector")
            return _histogram_quantile(float(q), vector, self.store.labels)
        raise _fail(f"function {name}()")

    def _aggregate(self, expr: pp.AggregateExpr, t: float):
        op = str(expr.op)
        if op not in AGGREGATIONS or expr.param is not None:
            raise _fail(f"aggregation {op}")
        inner = self._eval(expr.expr, t)
        if not isinstance(inner, _Vector):
            raise _fail(f"{op} of a scalar")
        labels = self.store.labels
        modifier = expr.modifier
        if modifier is None:
            keys = labels.derive(inner.ids, "keep", ())
        elif modifier.type == pp.AggModifierType.By:
            keys = labels.derive(inner.ids, "keep", tuple(sorted(modifier.labels)))
        else:
            keys = labels.derive(inner.ids, "without", tuple(sorted(modifier.labels)))
        if not len(keys):
            return _Vector(keys, inner.values)
        groups, inverse = np.unique(keys, return_inverse=True)
        values = inner.values
        if op == "sum":
            out = np.bincount(inverse, weights=values, minlength=len(groups))
            # bincount turns a NaN into a NaN sum, as Prometheus does; nothing more needed
        elif op == "count":
            out = np.bincount(inverse, minlength=len(groups)).astype(float)
        elif op == "avg":
            out = np.bincount(inverse, weights=values, minlength=len(groups)) / np.bincount(inverse, minlength=len(groups))
        else:
            out = np.full(len(groups), np.nan)
            pick = np.fmax if op == "max" else np.fmin  # a NaN loses to any number, as in Prometheus
            pick.at(out, inverse, values)
        return _Vector(groups, out)

    def _binary(self, expr: pp.BinaryExpr, t: float):
        op = str(expr.op)
        lhs, rhs = self._eval(expr.lhs, t), self._eval(expr.rhs, t)
        modifier = expr.modifier
        labels = self.store.labels
        if op == "or":
            if not (isinstance(lhs, _Vector) and isinstance(rhs, _Vector)):
                raise _fail("or needs two vectors")
            lsig, rsig = self._signatures(lhs, modifier), self._signatures(rhs, modifier)
            extra = ~np.isin(rsig, lsig)
            return _Vector(np.concatenate([lhs.ids, rhs.ids[extra]]), np.concatenate([lhs.values, rhs.values[extra]]))
        if op not in ARITHMETIC:
            raise _fail(f"operator {op}")
        if modifier is not None and modifier.return_bool:
            raise _fail("bool modifier")
        if isinstance(lhs, _Scalar) and isinstance(rhs, _Scalar):
            return _Scalar(_arith(op, np.array([float(lhs)]), np.array([float(rhs)]))[0])
        if isinstance(lhs, _Scalar):
            return _Vector(labels.derive(rhs.ids, "drop"), _arith(op, np.full(len(rhs.values), float(lhs)), rhs.values))
        if isinstance(rhs, _Scalar):
            return _Vector(labels.derive(lhs.ids, "drop"), _arith(op, lhs.values, np.full(len(lhs.values), float(rhs))))
        if modifier is not None and modifier.card != pp.VectorMatchCardinality.OneToOne:
            raise _fail(f"{modifier.card} matching")
        lsig, rsig = self._signatures(lhs, modifier), self._signatures(rhs, modifier)
        if len(np.unique(rsig)) < len(rsig):
            raise PrometheusUnavailable(QUERY_FAILED, "found duplicate series for the match group on the right hand-side")
        if len(np.unique(lsig)) < len(lsig):
            raise PrometheusUnavailable(QUERY_FAILED, "many-to-many matching not allowed")
        position = {s: i for i, s in enumerate(rsig.tolist())}
        pairs = [(i, position[s]) for i, s in enumerate(lsig.tolist()) if s in position]
        if not pairs:
            return _Vector(np.empty(0, dtype=np.int64), np.empty(0))
        left, right = (np.array(x, dtype=np.int64) for x in zip(*pairs))
        values = _arith(op, lhs.values[left], rhs.values[right])
        matching = modifier.matching if modifier is not None else None
        if matching is not None and matching.type == pp.LabelModifierType.Include:
            ids = labels.derive(lhs.ids[left], "keep", tuple(sorted(matching.labels)))
        elif matching is not None:
            ids = labels.derive(lhs.ids[left], "without", tuple(sorted(matching.labels)))
        else:
            ids = labels.derive(lhs.ids[left], "drop")
        return _Vector(ids, values)

    def _signatures(self, vector: _Vector, modifier) -> np.ndarray:
        """The label set vector matching compares: all but __name__, or on(...)/ignoring(...)."""
        matching = modifier.matching if modifier is not None else None
        labels = self.store.labels
        if matching is None:
            return labels.derive(vector.ids, "drop")
        if matching.type == pp.LabelModifierType.Include:
            return labels.derive(vector.ids, "keep", tuple(sorted(matching.labels)))
        return labels.derive(vector.ids, "without", tuple(sorted(matching.labels)))


def _arith(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b  # x/0 is ±Inf and 0/0 NaN, as in Prometheus


def _segments(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per series in a by-series sorted array: its id, first and last index."""
    if not len(ids):
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)] - 1
    return ids[starts], starts, ends


def _range_function(name: str, times: np.ndarray, ids: np.ndarray, values: np.ndarray, t_ms: int, range_ms: int,
                    labels: _Labels) -> _Vector:
    """A range-vector function per series; times in integer ms (Prometheus's durations are exact)."""
    series, first, last = _segments(ids)
    if not len(series):
        return _Vector(series, np.empty(0))
    counts = last - first + 1
    if name.endswith("_over_time"):
        if name == "count_over_time":
            out = counts.astype(float)
        else:
            segment = np.repeat(np.arange(len(series)), counts)
            if name in ("avg_over_time", "sum_over_time"):
                out = np.bincount(segment, weights=values, minlength=len(series))
                if name == "avg_over_time":
                    out = out / counts
            else:
                out = np.full(len(series), np.nan)
                (np.fmax if name == "max_over_time" else np.fmin).at(out, segment, values)
        return _Vector(labels.derive(series, "drop"), out)
    # rate / increase / delta: Prometheus 2.42's extrapolatedRate
    keep = counts >= 2
    series, first, last, counts = series[keep], first[keep], last[keep], counts[keep]
    if not len(series):
        return _Vector(series, np.empty(0))
    is_counter = name != "delta"
    result = values[last] - values[first]
    if is_counter:
        drops = np.r_[False, (values[1:] < values[:-1]) & (ids[1:] == ids[:-1])]
        if drops.any():
            segment = np.searchsorted(first, np.flatnonzero(drops), side="right") - 1
            previous = values[np.flatnonzero(drops) - 1]
            result = result + np.bincount(segment, weights=previous, minlength=len(first))[: len(first)]
    first_t, last_t = times[first], times[last]
    to_start = (first_t - (t_ms - range_ms)) / 1000.0
    to_end = (t_ms - last_t) / 1000.0
    sampled = (last_t - first_t) / 1000.0
    average = sampled / (counts - 1)
    if is_counter:
        first_v = values[first]
        can = (result > 0) & (first_v >= 0)
        to_zero = np.where(can, sampled * np.divide(first_v, result, out=np.zeros_like(result), where=result != 0),
                           np.inf)
        to_start = np.where(can & (to_zero < to_start), to_zero, to_start)
    threshold = average * 1.1
    interval = sampled + np.where(to_start < threshold, to_start, average / 2) \
        + np.where(to_end < threshold, to_end, average / 2)
    result = result * (interval / sampled)
    if name == "rate":
        result = result / (range_ms / 1000.0)
    return _Vector(labels.derive(series, "drop"), result)


def _histogram_quantile(q: float, vector: _Vector, labels: _Labels) -> _Vector:
    """Prometheus 2.42's bucketQuantile per group of series that differ only in `le`."""
    groups: dict[int, list[tuple[float, float]]] = {}
    keys = labels.derive(vector.ids, "without", ("le",))
    dicts = labels.dicts
    for key, label_id, value in zip(keys.tolist(), vector.ids.tolist(), vector.values.tolist()):
        le = dicts[label_id].get("le")
        if le is None:
            continue  # a series without le is ignored (Prometheus warns)
        try:
            bound = float(le)
        except ValueError:
            continue
        groups.setdefault(key, []).append((bound, value))
    out_ids, out_values = [], []
    for key, buckets in groups.items():
        out_ids.append(key)
        out_values.append(bucket_quantile(q, buckets))
    return _Vector(np.array(out_ids, dtype=np.int64), np.array(out_values, dtype=float))


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The q-quantile of (upper bound, cumulative count) buckets, as Prometheus computes it."""
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets, key=lambda b: b[0])
    if not ordered or not math.isinf(ordered[-1][0]):
        return math.nan
    merged: list[list[float]] = []
    for bound, count in ordered:  # coalesce buckets with the same bound
        if merged and merged[-1][0] == bound:
            merged[-1][1] += count
        else:
            merged.append([bound, count])
    highest = -math.inf
    for bucket in merged:  # ensure monotonic counts
        if bucket[1] > highest:
            highest = bucket[1]
        elif bucket[1] < highest:
            bucket[1] = highest
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(merged) - 1) if merged[i][1] >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    return start + (end - start) * (rank / count)
