"""Pure parts of the peer scenario: run order, percentiles, medians, ratios and the table.

No clock, no I/O: ``bench.peer`` measures, these turn its numbers into figures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

CRYPTOFEED = "cryptofeed"
TICKVAULT = "tickvault"

# (key in a run's figures, label in the table, how to print it)
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("rows_per_s", "rows/s", "{:,.0f}"),
    ("p50_ms", "latency p50 ms", "{:.1f}"),
    ("p99_ms", "latency p99 ms", "{:.1f}"),
    ("cpu_us_per_row", "CPU us/row, total", "{:.1f}"),
    # the same run's CPU per row over the simulator's, which does the same work for both: the
    # box's speed at that moment divided out (it drifts ±20 % here between runs)
    ("cpu_per_simulator", "CPU / simulator's CPU", "{:.2f}"),
    ("postgres_us_per_row", "PostgreSQL us/row (apart)", "{:.1f}"),
    # the longest wait between two commits: a stalled commit (peer.COMMIT_GAP), which sets
    # the p99 of a paced run when it is longer than the p99
    ("commit_gap_ms", "longest gap between commits ms", "{:,.1f}"),
    # when the simulator had written its last trade, after the start. On a burst its trades
    # are stamped in its first ticks (within ~0.2 s) and written over this time, so no
    # collector's p99 gets much below it (the p99 ratio's floor is about this over
    # cryptofeed's p99); on a paced run, that it kept the pace
    ("send_ms", "simulator's last send ms", "{:,.0f}"),
)


def run_order(runs: int, first: str = CRYPTOFEED, second: str = TICKVAULT) -> list[str]:
    """``runs`` runs of each, in pairs that alternate (A B, B A, A B, ...): a box that gets
    faster or slower over the session does not favour the one that always runs second."""
    order: list[str] = []
    for i in range(runs):
        order += [first, second] if i % 2 == 0 else [second, first]
    return order


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) with linear interpolation between the closest ranks, as
    PostgreSQL's ``percentile_cont`` and numpy's default compute it; NaN for no values."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} outside 0..1")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def medians(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of every figure over ``runs`` (NaN figures, e.g. no latency, left out)."""
    keys = {k for run in runs for k in run}
    out: dict[str, float] = {}
    for key in sorted(keys):
        values = [run[key] for run in runs if key in run and not math.isnan(run[key])]
        out[key] = statistics.median(values) if values else math.nan
    return out


CHECKS = ("missing", "duplicates", "bad")  # summed over runs: one bad run must show


def summarise(
    runs: Sequence[tuple[str, str, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """(scenario, collector, figures) per run -> scenario -> collector -> medians, in the
    order scenarios first appear; the row checks (``CHECKS``) are summed instead."""
    grouped: dict[str, dict[str, list[Mapping[str, float]]]] = {}
    for scenario, collector, figures in runs:
        grouped.setdefault(scenario, {}).setdefault(collector, []).append(figures)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, by in grouped.items():
        out[scenario] = {}
        for collector, each in by.items():
            summary = medians(each)
            for key in CHECKS:
                summary[key] = float(sum(f.get(key, 0.0) for f in each))
            out[scenario][collector] = summary
    return out


def cpu_per_simulator(figures: Mapping[str, float]) -> float:
    """A run's CPU per row over its simulator's CPU per row; NaN without both."""
    cpu = figures.get("cpu_us_per_row", math.nan)
    sim = figures.get("simulator_us_per_row", math.nan)
    if math.isnan(cpu) or math.isnan(sim) or sim <= 0:
        return math.nan
    return cpu / sim


def ratio(ours: float, theirs: float) -> float:
    """tickvault / cryptofeed; NaN when either is missing or theirs is 0."""
    if math.isnan(ours) or math.isnan(theirs) or theirs == 0:
        return math.nan
    return ours / theirs


def _fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else spec.format(value)


def _ratio_text(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def format_table(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    *,
    runs: int,
    cryptofeed_version: str,
    machine: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Lines of the side-by-side table. ``summary``: scenario -> collector -> median figures
    (``FIGURES``, plus ``missing``/``duplicates``/``bad`` summed over runs); ``machine``: the
    calibration lines (label, value) as the main table prints them."""
    head = (
        f"tickvault vs cryptofeed {cryptofeed_version}: medians of {runs} run(s) each, "
        f"alternating; ratio = tickvault / cryptofeed"
    )
    rows: list[tuple[str, str, str, str, str]] = []
    for scenario, by in summary.items():
        cf, tv = by.get(CRYPTOFEED, {}), by.get(TICKVAULT, {})
        first = True
        for key, label, spec in FIGURES:
            a, b = cf.get(key, math.nan), tv.get(key, math.nan)
            name = scenario if first else ""
            rows.append((name, label, _fmt(a, spec), _fmt(b, spec), _ratio_text(ratio(b, a))))
            first = False
        rows.append(("", "missing / dup / bad rows", _checks(cf), _checks(tv), ""))
    titles = ("scenario", "figure", CRYPTOFEED, TICKVAULT, "ratio")
    widths = [max([len(t), *(len(r[i]) for r in rows)]) for i, t in enumerate(titles)]
    lines = ["", head]

    def line(cells: Sequence[str]) -> str:
        name, label, a, b, r = cells
        return (
            f"{name:<{widths[0]}}  {label:<{widths[1]}}  {a:>{widths[2]}}  {b:>{widths[3]}}"
            f"  {r:>{widths[4]}}"
        ).rstrip()

    lines.append(line(titles))
    lines.append(line(tuple("-" * w for w in widths)))
    lines += [line(r) for r in rows]
    if machine:
        width = max(len(label) for label, _ in machine)
        lines += [f"{label:<{width}}  {value}" for label, value in machine]
    return lines


def _checks(figures: Mapping[str, float]) -> str:
    if not figures:
        return "-"
    values = [figures.get(k, math.nan) for k in CHECKS]
    return " / ".join("-" if math.isnan(v) else f"{v:.0f}" for v in values)


def machine_lines(start: Mapping[str, float], end: Mapping[str, float]) -> list[tuple[str, str]]:
    """The calibration figures before and after the peer runs, as the main table shows them."""
    lines = [
        (
            "machine at start / end: sum(range(10**7))",
            f"{start['python_loop_ms']:.0f} / {end['python_loop_ms']:.0f} ms",
        ),
        (
            "machine at start / end: fdatasync 8 KiB",
            f"{start['fdatasync_ms']:.2f} / {end['fdatasync_ms']:.2f} ms",
        ),
    ]
    if "fdatasync_p99_ms" in start and "fdatasync_p99_ms" in end:  # (not in older results)
        lines.append(
            (
                "machine at start / end: fdatasync p99 / longest",
                f"{start['fdatasync_p99_ms']:.1f} / {start['fdatasync_max_ms']:.0f}; "
                f"{end['fdatasync_p99_ms']:.1f} / {end['fdatasync_max_ms']:.0f} ms",
            )
        )
    return lines
