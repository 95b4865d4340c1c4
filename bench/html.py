"""`mailsvc bench --report DIR`: the JSON document and one self-contained HTML page beside it.

The page has no script and loads nothing (inline SVG and CSS only), so it opens from a file, a CI
artifact or an e-mail attachment the same: the figures table with the SPEC targets, throughput over
time at the sink, the latency distribution and CPU per delivery by process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from bench.report import SHOWN, TARGETS, summary_line

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_W, _H, _PAD_L, _PAD_B, _PAD_T, _PAD_R = 760, 260, 64, 40, 16, 16


def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _tick(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10 if value >= 1 else 0.1
    while step * 10 < value:
        step *= 10
    for factor in (1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10):
        if step * factor >= value:
            return step * factor
    return value


def _text(x: float, y: float, content: str, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{escape(content)}</text>'


def _axes(y_max: float, y_label: str, x_label: str) -> list[str]:
    plot_h = _H - _PAD_T - _PAD_B
    parts = [
        f'<line x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_H - _PAD_B}" class="axis"/>',
        f'<line x1="{_PAD_L}" y1="{_H - _PAD_B}" x2="{_W - _PAD_R}" y2="{_H - _PAD_B}" class="axis"/>',
        _text(14, _PAD_T + plot_h / 2, y_label, extra=f'transform="rotate(-90 14 {_PAD_T + plot_h / 2:.1f})"'),
        _text(_PAD_L + (_W - _PAD_L - _PAD_R) / 2, _H - 4, x_label),
    ]
    for i in range(5):
        value = y_max * i / 4
        y = _H - _PAD_B - plot_h * i / 4
        parts.append(f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" class="grid"/>')
        parts.append(_text(_PAD_L - 6, y + 4, _tick(value), anchor="end"))
    return parts


def _svg(parts: list[str], title: str) -> str:
    body = "\n".join(parts)
    head = f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img"><title>{escape(title)}</title>'
    return f"{head}\n{body}\n</svg>"


def _legend(names: list[str]) -> str:
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{_COLOURS[i % len(_COLOURS)]}"></span>'
        f"{escape(name)}</span>"
        for i, name in enumerate(names)
    )
    return f'<div class="legend">{items}</div>'


def _e2e_runs(scenarios: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, e2e-like details) of every run that delivered a backlog."""
    parts = {"scaleout": ("one", "two")}
    for name, summary in scenarios.items():
        for index, run in enumerate(summary.get("runs", [])):
            details = run.get("details", {})
            if name == "e2e" and "sink_timeline" in details:
                yield f"e2e run {index + 1}", details
            for part in parts.get(name, ()):
                if "sink_timeline" in details.get(part, {}):
                    yield f"{name} {part} run {index + 1}", details[part]
            # events: its runs in the order they ran (off, on, on, off)
            for label, each in zip(details.get("order", ()), details.get("runs", ()), strict=False):
                if "sink_timeline" in each:
                    yield f"{name} {label} run {index + 1}", each


def _rates(timeline: list[list[float]], step: float = 0.1) -> list[tuple[float, float]]:
    """(end, deliveries/s) over intervals of at least `step` seconds (a short last one is merged
    into the one before: the last arrival often lands just after a sample)."""
    points: list[tuple[float, float]] = []
    t0, n0 = timeline[0] if timeline else (0.0, 0.0)
    previous: tuple[float, float] | None = None
    for t1, n1 in timeline[1:]:
        if t1 - t0 >= step:
            points.append((t1, (n1 - n0) / (t1 - t0)))
            previous, (t0, n0) = (t0, n0), (t1, n1)
    if timeline and timeline[-1][0] > t0:  # a short tail: widen the last interval to cover it
        if points and previous is not None:
            points.pop()
            t0, n0 = previous
        t1, n1 = timeline[-1]
        points.append((t1, (n1 - n0) / (t1 - t0)))
    return points


def throughput_chart(scenarios: dict[str, Any]) -> str:
    series: list[tuple[str, list[tuple[float, float]]]] = []
    for label, details in _e2e_runs(scenarios):
        points = _rates(details["sink_timeline"])
        if points:
            series.append((label, points))
    if not series:
        return '<p class="none">No backlog delivered in this run (e2e, scaleout, events not run).</p>'
    x_max = _nice_max(max(t for _, points in series for t, _ in points))
    y_max = _nice_max(max(r for _, points in series for _, r in points))
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    parts = _axes(y_max, "deliveries/s", "seconds since the service was ready")
    for i in range(5):
        x = _PAD_L + plot_w * i / 4
        parts.append(_text(x, _H - _PAD_B + 16, _tick(x_max * i / 4)))
    for index, (_, points) in enumerate(series):
        path = " ".join(f"{_PAD_L + plot_w * t / x_max:.1f},{_H - _PAD_B - plot_h * r / y_max:.1f}" for t, r in points)
        colour = _COLOURS[index % len(_COLOURS)]
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    return _svg(parts, "throughput at the sink over time") + _legend([label for label, _ in series])


def latency_chart(scenarios: dict[str, Any]) -> str:
    total: list[float] = []
    edges: list[float | None] = []
    for run in scenarios.get("latency", {}).get("runs", []):
        histogram = run.get("details", {}).get("latency_histogram_ms")
        if not histogram:
            continue
        edges = [edge for edge, _ in histogram]
        counts = [count for _, count in histogram]
        total = [a + b for a, b in zip(total, counts, strict=True)] if total else counts
    if not total:
        return '<p class="none">No latency samples in this run (the latency scenario did not run).</p>'
    y_max = _nice_max(max(total))
    plot_w, plot_h = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B
    width = plot_w / len(total)
    parts = _axes(y_max, "messages", "XADD → sink arrival, ms (upper edge of each bucket)")
    for index, (edge, count) in enumerate(zip(edges, total, strict=True)):
        x = _PAD_L + index * width
        height = plot_h * count / y_max
        label = f"≤{edge:g}" if edge is not None else f">{edges[-2]:g}"
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{_H - _PAD_B - height:.1f}" width="{width - 2:.1f}" height="{height:.1f}" '
            f'fill="{_COLOURS[0]}"><title>{escape(label)} ms: {count:.0f}</title></rect>'
        )
        parts.append(_text(x + width / 2, _H - _PAD_B + 14, label, extra='font-size="9"'))
    return _svg(parts, "latency distribution")


def cpu_chart(scenarios: dict[str, Any]) -> str:
    runs: list[tuple[str, dict[str, float]]] = []  # run label, {process: ms per delivery}
    for label, details in _e2e_runs(scenarios):
        parts = details.get("cpu", {}).get("cpu_ms_per_delivery_by_process", {})
        if parts:
            runs.append((label, {process: float(value) for process, value in parts.items()}))
    if not runs:
        return '<p class="none">No CPU figures in this run (e2e not run, or /proc not readable).</p>'
    processes = list(dict.fromkeys(process for _, parts in runs for process in parts))
    bar, head, label_w = 15, 20, 230
    height = _PAD_T + sum(head + bar * (len(parts) + 1) for _, parts in runs) + 10
    x_max = _nice_max(max(sum(parts.values()) for _, parts in runs))
    plot_w = _W - label_w - _PAD_R - 70
    svg_parts, y = [], float(_PAD_T)
    for label, parts in runs:
        svg_parts.append(_text(8, y + head - 5, label, anchor="start", extra='font-weight="bold"'))
        y += head
        for process, value in [*parts.items(), ("total", sum(parts.values()))]:
            colour = "#555" if process == "total" else _COLOURS[processes.index(process) % len(_COLOURS)]
            width = plot_w * value / x_max
            svg_parts.append(_text(label_w - 6, y + bar - 4, process, anchor="end"))
            svg_parts.append(
                f'<rect x="{label_w}" y="{y:.1f}" width="{width:.1f}" height="{bar - 3}" fill="{colour}"/>'
            )
            svg_parts.append(_text(label_w + width + 4, y + bar - 4, f"{value:.3f} ms", anchor="start"))
            y += bar
    svg_parts.append(f'<line x1="{label_w}" y1="{_PAD_T}" x2="{label_w}" y2="{y:.1f}" class="axis"/>')
    body = "\n".join(svg_parts)
    svg = f'<svg viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" role="img">'
    return f"{svg}<title>CPU per delivery by process</title>\n{body}\n</svg>" + _legend(processes)


def figures_table(scenarios: dict[str, Any]) -> str:
    rows = []
    for name, summary in scenarios.items():
        targets = {t.figure: t for t in TARGETS.get(name, [])}
        median = summary.get("median", {})
        for figure in SHOWN.get(name, tuple(median)):
            if figure not in median:
                continue
            value = median[figure]
            target = targets.get(figure)
            verdict = ""
            if target is not None:
                verdict = f"{target} {'ok' if target.met(value) else 'MISSED'}"
            runs = " ".join(_fmt(run["figures"][figure]) for run in summary["runs"] if figure in run.get("figures", {}))
            rows.append(
                f"<tr><td>{escape(name)}</td><td>{escape(figure)}</td><td class='n'>{escape(_fmt(value))}</td>"
                f"<td class='n'>{escape(runs)}</td><td>{escape(verdict)}</td></tr>"
            )
        for run in summary.get("runs", []):
            if "error" in run:
                error = escape(run["error"])
                rows.append(f"<tr><td>{escape(name)}</td><td>error</td><td colspan='3'>{error}</td></tr>")
    head = "<tr><th>scenario</th><th>figure</th><th>median</th><th>runs</th><th>SPEC target</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 800px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
svg text { font-size: 11px; fill: #333; } .axis { stroke: #333; } .grid { stroke: #eee; }
.legend { margin: 4px 0 0 64px; } .key { margin-right: 1.2em; white-space: nowrap; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
.none { color: #777; } .meta { color: #555; }
"""


def render(document: dict[str, Any]) -> str:
    """The page for one bench document (what `mailsvc bench` prints on stdout)."""
    scenarios = document.get("scenarios", {})
    git = document.get("git") or {}
    machine = document.get("machine", {})
    meta = (
        f"started {document.get('started_at', '?')}, {document.get('duration_s', '?')} s; "
        f"commit {str(git.get('commit', '?'))[:12]}{' (dirty)' if git.get('dirty') else ''}; "
        f"{machine.get('cpu_count', '?')} cores, load {machine.get('load_average_at_start', '?')} → "
        f"{machine.get('load_average_at_end', '?')}; sink {', '.join(document.get('sink', {}).get('used', []))}"
    )
    line = summary_line(scenarios) or ""
    notes = "".join(f"<li>{escape(note)}</li>" for note in document.get("notes", []))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mailsvc bench {escape(document.get("started_at", ""))}</title>
<style>{_STYLE}</style></head><body>
<h1>mailsvc bench</h1>
<p class="meta">{escape(meta)}</p>
<p><strong>{escape(line)}</strong></p>
{f"<ul>{notes}</ul>" if notes else ""}
<h2>Figures (median of the runs; SPEC §10 targets)</h2>
{figures_table(scenarios)}
<h2>Throughput over time at the sink</h2>
{throughput_chart(scenarios)}
<h2>Latency distribution</h2>
{latency_chart(scenarios)}
<h2>CPU per delivery by process</h2>
<p class="meta">Service: each <code>mailsvc serve</code> process. PostgreSQL: the client backends of the
run's database, and the rest of the cluster (its other processes; on a shared server, other users too).</p>
{cpu_chart(scenarios)}
<h2>Settings</h2>
<pre>{escape(json.dumps(document.get("settings", {}), indent=1, default=str))}</pre>
</body></html>
"""


def write_report(document: dict[str, Any], folder: Path, started_at: datetime) -> list[Path]:
    """`bench-<start time>.json` and `.html` in `folder` (created); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"bench-{started_at:%Y%m%dT%H%M%SZ}"
    json_path, html_path = stem.with_suffix(".json"), stem.with_suffix(".html")
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    html_path.write_text(render(document))
    return [json_path, html_path]
