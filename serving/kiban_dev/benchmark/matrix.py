"""The benchmark matrix: traces x engine profiles x rates, several seeds per cell, means with
95 % confidence intervals, and the bar checked per cell and over the matrix.

Each seed draws the cell's true engine, true cold start and the rate replication's jitter
(run.BenchConfig). Kiban runs with the operator's defaults everywhere; each peer's knob is
tuned per cell over the seeds (run.tune_peer). The static fleet in hindsight, the oracle and
the clairvoyant are references, never peers. Orchestration and pure summaries here;
report.write_matrix writes the files.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from kiban_dev.benchmark.run import (
    PEER_KNOBS,
    TUNE_ONE_POINT,
    TUNE_STEPS,
    BenchConfig,
    Row,
    TraceSpec,
    run_cell,
    standard_traces,
)

PROFILES = ("nvidia-a100-80gb/8B", "nvidia-h100-80gb/70B", "nvidia-l4/8B")
RATES = (1.0, 4.0)
SEEDS = (0, 1, 2)
MATRIX_MAX_REPLICAS = 120
REFERENCES = ("oracle", "clairvoyant", "static-peak")
PEER_BAR, MATRIX_BAR = 1.0, 0.90  # Kiban <= this x the cheapest tuned peer per cell / on average
SEED_FLOOR = 0.985  # no seed of Kiban below this attainment
QUICK_CELLS = (("conv", "nvidia-a100-80gb/8B", 1.0), ("code", "nvidia-a100-80gb/8B", 1.0))
QUICK_SEEDS = (0, 1)
QUICK_DURATION_S = 240.0  # --matrix --quick checks rows and keys, never numbers
QUICK_TUNE_STEPS = TUNE_ONE_POINT  # one knob value per peer, no search


@dataclass(frozen=True)
class Cell:
    trace: str
    profile: str
    rate_factor: float

    @property
    def label(self) -> str:
        return f"{self.trace} / {self.profile} / x{self.rate_factor:g}"


def cells(quick: bool = False, traces: tuple[str, ...] | None = None, profiles: tuple[str, ...] | None = None,
          rates: tuple[float, ...] | None = None) -> list[Cell]:
    """The matrix's cells (the quick subset with quick), optionally only some traces, profiles
    or rates: the full matrix can then be run in parts (the CLI's --resume merges them)."""
    chosen = ([Cell(*c) for c in QUICK_CELLS] if quick else
              [Cell(t.name, p, r) for r in RATES for p in PROFILES for t in standard_traces()])
    return [c for c in chosen if (traces is None or c.trace in traces)
            and (profiles is None or c.profile in profiles) and (rates is None or c.rate_factor in rates)]


def cell_slug(cell: Cell) -> str:
    """A file name for one cell's rows (the CLI keeps each finished cell, so a run can resume)."""
    return f"{cell.trace}__{cell.profile.replace('/', '_')}__x{cell.rate_factor:g}"


def cell_config(bench: BenchConfig, cell: Cell) -> BenchConfig:
    """The bench settings of one cell: its profile and rate, and the GPUs per replica the operator
    sizes for that profile (re-derived: the matrix's base settings carry another profile's)."""
    return replace(bench, profile=cell.profile, rate_factor=cell.rate_factor, gpus_per_replica=None)


def _run(args: tuple[Cell, BenchConfig, tuple[int, ...], int, float | None]) -> list[Row]:
    cell, bench, seeds, steps, duration = args
    spec = next(t for t in standard_traces() if t.name == cell.trace)
    return run_cell(spec, cell_config(bench, cell), seeds, tune_steps=steps, duration_s=duration)


def run_matrix(bench: BenchConfig, quick: bool = False, seeds: tuple[int, ...] | None = None,
               progress: Callable[[str], None] = lambda _: None, chosen: list[Cell] | None = None,
               cell_done: Callable[[Cell, list[Row]], None] = lambda _c, _r: None) -> list[Row]:
    """Every cell (the quick subset with quick, or the chosen ones), cells in parallel processes
    (jobs); cell_done gets each cell's rows as soon as that cell has finished."""
    chosen = cells(quick) if chosen is None else chosen
    seeds = seeds or (QUICK_SEEDS if quick else SEEDS)
    steps = QUICK_TUNE_STEPS if quick else TUNE_STEPS
    duration = QUICK_DURATION_S if quick else None
    bench = replace(bench, quick=False, max_replicas=max(bench.max_replicas, MATRIX_MAX_REPLICAS))
    jobs = [(cell, bench, seeds, steps, duration) for cell in chosen]
    if bench.jobs == 1:
        rows: list[Row] = []
        for job in jobs:
            cell_rows = _run(job)
            cell_done(job[0], cell_rows)
            rows += cell_rows
            progress(job[0].label)
        return rows
    out: dict[int, list[Row]] = {}
    with ProcessPoolExecutor(max_workers=bench.jobs) as pool:
        futures = {pool.submit(_run, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            out[i] = future.result()
            cell_done(jobs[i][0], out[i])
            progress(jobs[i][0].label)
    return [row for i in range(len(jobs)) for row in out[i]]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t); 0 for one value."""
    if not values:
        return math.nan, math.nan
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, 0.0
    from scipy.stats import t

    half = float(t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return mean, half


@dataclass(frozen=True)
class FamilySummary:
    family: str
    policy: str
    gpu_hours: tuple[float, float]  # mean, 95 % CI half-width
    attainment: tuple[float, float]
    min_attainment: float
    complete: bool
    knob: float | None
    seeds: int


def cell_key(row: Row) -> tuple[str, str, float]:
    return (row.trace, row.profile, row.rate_factor)


def summarize_cell(rows: list[Row]) -> dict[str, FamilySummary]:
    """Per family, the chosen rows over the seeds as means with confidence intervals."""
    out: dict[str, FamilySummary] = {}
    for family in dict.fromkeys(r.family for r in rows):
        picked = [r for r in rows if r.family == family and r.chosen]
        if not picked:
            continue
        out[family] = FamilySummary(
            family=family,
            policy=picked[0].policy if len({r.policy for r in picked}) == 1 else family,
            gpu_hours=mean_ci([r.gpu_hours for r in picked]),
            attainment=mean_ci([r.ttft_slo_attainment for r in picked]),
            min_attainment=min(r.ttft_slo_attainment for r in picked),
            complete=all(r.complete for r in picked),
            knob=picked[0].knob,
            seeds=len(picked),
        )
    return out


def cell_bar(summary: dict[str, FamilySummary], attainment: float = 0.99) -> dict[str, object]:
    """The bar in one cell: Kiban's seed mean >= 99 % (no seed below 98.5 %), and its GPU-hours
    against the cheapest tuned peer whose seed mean reaches 99 %, and against the clairvoyant."""
    kiban = summary.get("kiban")
    out: dict[str, object] = {}
    if kiban is None:
        return out
    out["kiban_gpu_hours"] = kiban.gpu_hours
    out["kiban_attainment"] = kiban.attainment
    out["kiban_meets_slo"] = bool(kiban.attainment[0] >= attainment and kiban.min_attainment >= SEED_FLOOR)
    peers = [s for f, s in summary.items() if f in PEER_KNOBS and s.complete and s.attainment[0] >= attainment]
    if peers:
        cheapest = min(peers, key=lambda s: s.gpu_hours[0])
        out["cheapest_peer"] = cheapest.family
        out["cheapest_peer_gpu_hours"] = cheapest.gpu_hours
        out["kiban_over_cheapest_peer"] = round(kiban.gpu_hours[0] / cheapest.gpu_hours[0], 3)
        out["within_peer_bar"] = bool(kiban.gpu_hours[0] <= PEER_BAR * cheapest.gpu_hours[0])
    clair = summary.get("clairvoyant")
    if clair is not None and clair.gpu_hours[0] > 0:
        out["kiban_over_clairvoyant"] = round(kiban.gpu_hours[0] / clair.gpu_hours[0], 3)
    return out


def matrix_summary(rows: list[Row], attainment: float = 0.99) -> dict[str, object]:
    """Per cell its families and bar; over the matrix the mean Kiban / cheapest-peer ratio."""
    by_cell: dict[tuple[str, str, float], list[Row]] = {}
    for row in rows:
        by_cell.setdefault(cell_key(row), []).append(row)
    per_cell, ratios = [], []
    for key, cell_rows in by_cell.items():
        summary = summarize_cell(cell_rows)
        bar = cell_bar(summary, attainment)
        if "kiban_over_cheapest_peer" in bar:
            ratios.append(float(bar["kiban_over_cheapest_peer"]))
        per_cell.append({"trace": key[0], "profile": key[1], "rate_factor": key[2], "bar": bar,
                         "families": {f: s.__dict__ for f, s in summary.items()}})
    mean_ratio = float(np.mean(ratios)) if ratios else None
    return {"mean_kiban_over_cheapest_peer": mean_ratio,
            "within_matrix_bar": bool(mean_ratio is not None and mean_ratio <= MATRIX_BAR),
            "cells_meeting_slo": sum(1 for c in per_cell if c["bar"].get("kiban_meets_slo")),
            "cells": per_cell}


__all__ = ["Cell", "cells", "cell_slug", "cell_config", "run_matrix", "mean_ci", "summarize_cell", "cell_bar", "matrix_summary", "TUNE_STEPS"]
