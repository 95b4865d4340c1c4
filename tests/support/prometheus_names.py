"""The names OTLP metrics take in Prometheus, as the collector's `prometheus` exporter builds them.

A port of `normalizeName` in collector-contrib's `pkg/translator/prometheus/normalize_name.go`,
the code path of the version `deploy/docker-compose.yml` pins (0.111.0): there the exporter calls
`BuildCompliantName(metric, namespace, add_metric_suffixes)`, and with `add_metric_suffixes: true`
(the default, set explicitly in `deploy/otel-collector.yaml`) and the `NormalizeName` feature gate
in beta (enabled by default since 0.85.0) it normalizes fully:

- the name is split into words at every character that is not a letter or a digit (dots and
  underscores alike) and joined again with `_`;
- the unit is split at the first `/`; the main unit (`s` → `seconds`, `By` → `bytes`, `1` → nothing,
  an unknown unit as itself) is appended unless it is empty, holds `{`/`}` (an annotation such as
  `{delivery}` is dropped whole) or is a word of the name already; a per-unit becomes `per_<unit>`;
- a monotonic sum (a counter) moves or adds `total` to the end; a gauge with unit `1` gets `ratio`;
- a namespace, when configured, is prefixed; a name starting with a digit gets a leading `_`.

A histogram is exposed by the Prometheus client as `<name>_bucket`, `<name>_sum` and `<name>_count`.
Attribute keys become labels the same way (`http.route` → `http_route`), and the resource's
`service.name` / `service.instance.id` become `job` / `instance`.
"""

from __future__ import annotations

from typing import Literal

MetricKind = Literal["gauge", "sum", "histogram", "exponential_histogram", "summary"]

# the translator's unitMap and perUnitMap, as of 0.111.0
UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}

# the Prometheus client's series of one histogram / summary
_HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")
_SUMMARY_SERIES = ("", "_sum", "_count")


def words(text: str) -> list[str]:
    """`text` split at every character that is neither a letter nor a digit (Go's `FieldsFunc`)."""
    out: list[str] = []
    current: list[str] = []
    for char in text:
        if char.isalpha() or char.isdigit():
            current.append(char)
        elif current:
            out.append("".join(current))
            current = []
    if current:
        out.append("".join(current))
    return out


def clean(text: str) -> str:
    """The translator's `CleanUpString`: the words of `text` joined with `_`."""
    return "_".join(words(text))


def prometheus_name(name: str, unit: str, kind: MetricKind, *, monotonic: bool = False, namespace: str = "") -> str:
    """The metric family name the exporter gives an OTLP metric (`monotonic` only matters for sums)."""
    tokens = words(name)
    main, _, per = (part.strip() for part in unit.partition("/"))
    if main and not any(brace in main for brace in "{}"):
        main_prom = clean(UNITS.get(main, main))
        if main_prom and main_prom not in tokens:
            tokens.append(main_prom)
    if per and not any(brace in per for brace in "{}"):
        per_prom = clean(PER_UNITS.get(per, per))
        if per_prom and per_prom not in tokens:
            tokens += ["per", per_prom]
    if kind == "sum" and monotonic:
        tokens = [t for t in tokens if t != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [t for t in tokens if t != "ratio"] + ["ratio"]
    if namespace:
        tokens.insert(0, namespace)
    normalized = "_".join(tokens)
    return f"_{normalized}" if normalized[:1].isdigit() else normalized


def prometheus_series(
    name: str, unit: str, kind: MetricKind, *, monotonic: bool = False, namespace: str = ""
) -> frozenset[str]:
    """Every series name a query may select for this metric (a histogram's `_bucket`/`_sum`/`_count`)."""
    family = prometheus_name(name, unit, kind, monotonic=monotonic, namespace=namespace)
    if kind == "histogram":
        return frozenset(family + suffix for suffix in _HISTOGRAM_SERIES)
    if kind == "summary":
        return frozenset(family + suffix for suffix in _SUMMARY_SERIES)
    return frozenset({family})


def prometheus_label(key: str) -> str:
    """An attribute key as a label name (the translator's `NormalizeLabel`, for plain keys)."""
    label = "".join(char if char.isalnum() or char == "_" else "_" for char in key)
    return f"key_{label}" if label[:1].isdigit() else label
