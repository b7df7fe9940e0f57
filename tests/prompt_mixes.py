"""Prompt mixes for tests that know only a mean and a coefficient of variation.

Test-side (scipy is a developer dependency): the operator always reads its prompt mix from
vLLM's prompt-token histogram (kiban.autoscale.collector.prompt_mix_from).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import gamma

from kiban.capacity.batching import PromptMix


def prompt_mix_from_cv(coefficient_of_variation: float, points: int = 16) -> PromptMix:
    """A gamma-shaped prompt mix (mean 1, to be rescaled) for when only mean and CV are known:
    `points` equal-probability quantiles of a gamma law with that coefficient of variation."""
    if not coefficient_of_variation > 0:
        raise ValueError(f"coefficient_of_variation must be > 0, got {coefficient_of_variation!r}")
    shape = 1.0 / coefficient_of_variation**2
    quantiles = (np.arange(points) + 0.5) / points
    values = gamma.ppf(quantiles, shape, scale=1.0 / shape)
    return tuple((float(v), 1.0 / points) for v in values)
