"""The human-readable forms of a bench report: a Markdown table and a PNG plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autoweld.bench.runner import STAGE_LABELS

__all__ = ["markdown_report", "plot_report"]


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _met(goal: Mapping[str, Any] | None) -> str:
    if not goal or goal.get("met") is None:
        return "–"
    return "met" if goal["met"] else "**missed**"


def markdown_report(report: Mapping[str, Any]) -> str:
    """A Markdown table of one report: per stage p50/p95/p99/max for both sides, end to end,
    throughput, cold start, peak memory, the ratios with the issue's goals, and the machine."""
    labels = {**STAGE_LABELS, **report.get("stage_labels", {})}
    lines = ["# autoweld-bench: runtime vs the plain PyTorch way", ""]
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    config = report["config"]
    lines += [
        f"{config['n']} inspections per side after {config['warmup']} warm-up, batch 1, "
        f"{config['threads']} threads each; images: {config['images']} ({config['n_images']} "
        f"files). Times in ms. Ratio = torch way ÷ ours at p50 (above 1: we are faster).",
        "",
    ]
    lines += _stage_table(report, labels)
    lines += _measure_table(report)
    lines += _notes(report, labels)
    return "\n".join(lines)


def _stage_table(report: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """Per stage and end to end: p50/p95/p99/max of both sides and the p50 ratio."""
    ref = report.get("reference")
    header = "| stage | ours p50 | p95 | p99 | max |"
    rule = "|---|---:|---:|---:|---:|"
    if ref:
        header += " torch p50 | p95 | p99 | max | ratio p50 |"
        rule += "---:|---:|---:|---:|---:|"
    lines = [header, rule]
    rows = [
        (labels.get(s, s), report["stages"].get(s), ref and ref["stages"].get(s), s)
        for s in report["stages"]
    ]
    rows.append(("**end to end**", report["end_to_end"], ref and ref["end_to_end"], None))
    speedups = report.get("ratios", {}).get("stage_speedup_p50", {})
    for label, ours, theirs, stage in rows:
        cells = [label] + [_ms(ours[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
        if ref:
            if theirs:
                cells += [_ms(theirs[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
            else:
                cells += ["–"] * 4
            value = speedups.get(stage) if stage else report.get("speedup_median")
            cells.append(_x(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _measure_table(report: Mapping[str, Any]) -> list[str]:
    """End-to-end median, cold start, peak memory and throughput, with the goals."""
    ref = report.get("reference")
    config = report["config"]
    lines = ["| measure | ours | torch way | ratio | goal |", "|---|---:|---:|---:|---|"]
    goals = report.get("goals", {})
    ratios = report.get("ratios", {})
    lines.append(
        f"| end-to-end median (ms) | {_ms(report['end_to_end']['p50_ms'])} | "
        f"{_ms(ref['end_to_end']['p50_ms']) if ref else '–'} | {_x(report.get('speedup_median'))} "
        f"faster | ≥ 3× faster: {_met(goals.get('speedup_median'))} |"
    )
    lines.append(
        f"| cold start, new process to first result (ms, median of {config['cold_repeats']}) | "
        f"{_ms(report['cold_start_ms'])} | {_ms(ref['cold_start_ms']) if ref else '–'} | "
        f"{_x(ratios.get('cold_start_speedup'))} faster | ≥ 5× faster: "
        f"{_met(goals.get('cold_start_speedup'))} |"
    )
    rss = ratios.get("peak_rss_ratio")
    lines.append(
        f"| peak RSS of that process (MB) | {_ms(report['peak_rss_mb'])} | "
        f"{_ms(ref['peak_rss_mb']) if ref else '–'} | {'–' if rss is None else f'{rss:.2f}'} of "
        f"torch | ≤ ⅓: {_met(goals.get('peak_rss_ratio'))} |"
    )
    for key, value in report["throughput"].items():
        theirs = ref["throughput"].get(key) if ref else None
        pretty = key.replace("_images_per_s", "").replace("_", " ")
        lines.append(
            f"| throughput, {pretty} (images/s) | {value:.1f} | "
            f"{'–' if theirs is None else f'{theirs:.1f}'} | "
            f"{_x(ratios.get('throughput_' + key.replace('_images_per_s', '')))} | |"
        )
    lines.append("")
    return lines


def _notes(report: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """Agreement of the two sides, machine, versions, bundle, station and the slowest stage."""
    lines: list[str] = []
    agreement = report.get("agreement")
    if agreement:
        lines += [
            f"Agreement on {agreement['images_compared']} distinct images: same decision on "
            f"{agreement['same_decision']}, largest fused-probability difference "
            f"{agreement['max_abs_probability_diff']}, largest relative score difference "
            f"{agreement['max_rel_score_diff']}.",
            "",
        ]
    machine = report["machine"]
    versions = report.get("versions", {})
    bundle = report["bundle"]
    lines += [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores "
        f"({machine['logical_cores']} logical), {machine['threads']} threads per side, load "
        f"average {machine['load_average_1_5_15']}, {machine['platform']}, Python "
        f"{machine['python']}. Providers: {', '.join(report['providers'])}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".",
        "",
        f"Bundle: {bundle['category']} ({bundle['backbone']}, {bundle['image_size']} px, heads "
        f"{', '.join(bundle['heads'])}), sha256 `{bundle['sha256']}`.",
        "",
        f"Station stages: {report['quality']['ledger']}; PLC: {report['quality']['plc']}. Both "
        "sides use the same station code." + _late_records(report),
        "",
        f"Slowest stage of ours at p50: {labels.get(report['bottleneck'], report['bottleneck'])}.",
        "",
    ]
    return lines


def _late_records(report: Mapping[str, Any]) -> str:
    """Records that missed their deadline (a stalled disk), per side; empty when none did."""
    sides = {
        "ours": report.get("inspections"),
        "torch way": (report.get("reference") or {}).get("inspections"),
    }
    late = {name: side.get("records_late", 0) for name, side in sides.items() if side}
    if not any(late.values()):
        return ""
    counts = ", ".join(
        f"{name} {n} of {sides[name]['records_written']}" for name, n in late.items()
    )
    return (
        f" Records that missed their deadline (PLC sent a corrective FAIL, record queued and "
        f"written later): {counts}."
    )


def _box(ax: Any, data: list[float], position: float, colour: str, horizontal: dict) -> None:
    """One side's box of one stage, with its median written right of it."""
    import numpy as np

    ax.boxplot(
        [data],
        positions=[position],
        **horizontal,
        widths=0.3,
        whis=(1, 99),
        showfliers=True,
        patch_artist=True,
        boxprops={"facecolor": colour, "alpha": 0.5, "edgecolor": colour},
        medianprops={"color": "black"},
        whiskerprops={"color": colour},
        capprops={"color": colour},
        flierprops={"marker": ".", "markersize": 3, "markeredgecolor": colour},
    )
    ax.annotate(
        _ms(float(np.median(data))),
        (float(np.max(data)), position),
        xytext=(6, 0),
        textcoords="offset points",
        va="center",
        fontsize=8,
        color=colour,
    )


def plot_report(
    report: Mapping[str, Any], samples: Mapping[str, Mapping[str, list[float]]], path: str | Path
) -> Path:
    """Horizontal box plots per stage (log-scale ms), ours above the torch way, end to end last.

    ``samples``: side (``"ours"``, ``"reference"``) -> stage (and ``"end_to_end"``) -> samples ms.
    matplotlib is imported here, with the Agg backend, so the rest of the bench never needs it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {**STAGE_LABELS, **report.get("stage_labels", {}), "end_to_end": "END TO END"}
    # matplotlib 3.10 replaced vert=False by orientation="horizontal" (and deprecates vert)
    major, minor = (int(v) for v in matplotlib.__version__.split(".")[:2])
    horizontal: dict[str, Any] = (
        {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}
    )
    stages = [s for s in samples["ours"] if samples["ours"][s]]
    sides = [("ours", "ours (runtime)", "#1f77b4")]
    if samples.get("reference"):
        sides.append(("reference", "torch way", "#d62728"))
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.75 * len(stages)))
    ticks, tick_labels = [], []
    step = 1.0
    for row, stage in enumerate(stages):
        base = (len(stages) - 1 - row) * step
        for k, (side, _name, colour) in enumerate(sides):
            data = samples.get(side, {}).get(stage)
            if not data:
                continue
            offset = 0.18 if len(sides) == 2 and k == 0 else -0.18 if len(sides) == 2 else 0
            _box(ax, data, base + offset, colour, horizontal)
        ticks.append(base)
        tick_labels.append(labels.get(stage, stage))
    if "end_to_end" in stages:
        ax.axhline(0.5 * step, color="grey", linewidth=0.8)
    ax.set_yticks(ticks, tick_labels)
    ax.set_xscale("log")
    ax.set_xlabel(
        "latency per image (ms, log scale) — box: p25–p75, line and number: median, "
        "whiskers: p1–p99, dots: beyond"
    )
    low, high = ax.get_xlim()
    ax.set_xlim(low, high * 4)  # room for the numbers right of the longest whisker
    ax.grid(axis="x", which="both", alpha=0.3)
    for _side, name, colour in sides:
        ax.plot([], [], color=colour, linewidth=8, alpha=0.5, label=name)
    ax.legend(loc="upper right")
    title = f"autoweld-bench: {report['bundle']['category']} bundle, {report['config']['threads']} threads"
    if report.get("speedup_median"):
        title += f" — end to end {report['speedup_median']:.1f}× faster at the median"
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
