"""Small, pure statistics: nearest-rank percentiles and medians of run figures."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence

NS_PER_MS = 1_000_000


def percentile(ordered: Sequence[int | float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def summarize_ns(values: Sequence[int]) -> dict[str, float] | None:
    """Count, mean, p50/p90/p99 and max of nanosecond samples, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    return {
        "count": float(len(ordered)),
        "mean_ms": statistics.fmean(ordered) / NS_PER_MS,
        "p50_ms": percentile(ordered, 0.50) / NS_PER_MS,
        "p90_ms": percentile(ordered, 0.90) / NS_PER_MS,
        "p99_ms": percentile(ordered, 0.99) / NS_PER_MS,
        "max_ms": ordered[-1] / NS_PER_MS,
    }


# upper bucket edges (ms) of the latency distribution the report draws; the last bucket is "more"
HISTOGRAM_EDGES_MS = (0.5, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)


def histogram_ms(values: Sequence[int]) -> list[list[float | None]]:
    """[upper edge ms (None: above the last edge), count] of nanosecond samples, every bucket listed."""
    counts = [0] * (len(HISTOGRAM_EDGES_MS) + 1)
    for value in values:
        counts[bisect.bisect_left(HISTOGRAM_EDGES_MS, value / NS_PER_MS)] += 1
    edges: list[float | None] = [float(edge) for edge in HISTOGRAM_EDGES_MS]
    return [[edge, float(n)] for edge, n in zip([*edges, None], counts, strict=True)]


def median_figures(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per figure, the median over the runs that have it."""
    names: list[str] = []
    for run in runs:
        names.extend(name for name in run if name not in names)
    return {name: statistics.median([run[name] for run in runs if name in run]) for name in names}
