"""A PNG of the kernel rollout dashboard's panels (and the write health panels that show
the mechanism), drawn with matplotlib from the same PromQL the generated JSON holds, run
against a Prometheus: what an operator sees in Grafana, for readers without one."""

from __future__ import annotations

import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from foliowatch.errors import ServiceError

from . import config, generate
from .queries import PanelQuery, Prometheus, concrete, legend, panel_queries

# (dashboard file, panel title prefix) in reading order: the rollout's story
TIMESERIES = (("kernel-rollout.json", "Hosts per kernel per fleet"),
              ("kernel-rollout.json", "Write throughput, new kernel / baseline"),
              ("write-health.json", "Buffered write throughput by kernel"),
              ("write-health.json", "Direct compaction stalls"))
TABLE = ("kernel-rollout.json", "Open regressions")
VERDICT = ("kernel-rollout.json", "Rollout verdict per fleet")
ANNOTATION = ("kernel-rollout.json", "annotation: Open regressions (Prometheus)")
COLOURS = {"green": "#56a64b", "red": "#e02f44", "orange": "#ff9830", "yellow": "#f2cc0c"}


def _find(dashboards: Dict[str, dict], where: Tuple[str, str]) -> Tuple[dict, List[PanelQuery]]:
    name, title = where
    qs = [q for q in panel_queries(dashboards[name]) if q.panel.startswith(title)]
    if not qs:
        raise ValueError(f"{name}: no panel titled {title!r}")
    panel = {}
    for p in dashboards[name]["panels"]:
        if p.get("title", "").startswith(title):
            panel = p
    return panel, qs


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def render(prometheus_url: str, out: str, *, start: Optional[float] = None,
           end: Optional[float] = None, step: Optional[float] = None,
           values: Optional[Dict[str, str]] = None) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    prom = Prometheus(prometheus_url)
    end = end if end is not None else time.time()
    start = start if start is not None else end - 3600
    if end <= start:
        raise ValueError(f"render: --end {end} is not after --start {start}")
    step = step or max(1.0, (end - start) / 200)
    rate = f"{max(4 * step, 4):.0f}s"
    dashboards = generate.dashboards()

    fig = plt.figure(figsize=(16, 15), dpi=90)
    grid = fig.add_gridspec(4, 2, height_ratios=[0.55, 1, 1, 1.05], hspace=0.45, wspace=0.18,
                            width_ratios=[1, 1.25])
    fig.suptitle("foliowatch / Kernel rollout — rendered from Prometheus with the dashboards' PromQL",
                 fontsize=14, x=0.01, ha="left")

    # verdict per fleet, as the stat panel's value mapping colours it
    ax = fig.add_subplot(grid[0, 0])
    ax.set_axis_off()
    panel, (q,) = _find(dashboards, VERDICT)
    ax.set_title(panel["title"], loc="left", fontsize=11)
    mapping = {v: (t, c) for v, t, c in config.VERDICTS}
    rows = prom.instant(concrete(q.expr, values, rate), at=end)
    ordered = sorted(rows, key=lambda r: legend(q.legend, r["metric"]))[:4]
    for i, r in enumerate(ordered):
        text, colour = mapping.get(int(float(r["value"][1])), ("?", "grey"))
        ax.text(0.01, 0.85 - 0.27 * i, f"{text.upper():<11} {legend(q.legend, r['metric'])}",
                fontsize=10, va="center", color="white", weight="bold", family="monospace",
                bbox=dict(boxstyle="round,pad=0.4", fc=COLOURS.get(colour, colour)))
    if not rows:
        ax.text(0.01, 0.45, "no verdict exported", fontsize=11)

    # open regressions with the headline effect
    ax = fig.add_subplot(grid[0, 1])
    ax.set_axis_off()
    panel, (q,) = _find(dashboards, TABLE)
    ax.set_title(panel["title"], loc="left", fontsize=11)
    cols = [c for c in [t for t in panel["transformations"] if t["id"] == "organize"][0]
            ["options"]["indexByName"]]
    show = ["fleet", "arch", "page_size", "fs", "kernel_to", "status", "headline"]
    rows = prom.instant(concrete(q.expr, values, rate), at=end)
    show = [c for c in show if c in cols]
    cells = [[textwrap.fill(r["metric"].get(c, ""), 58) for c in show] for r in rows][:4]
    if cells:
        widths = [0.1, 0.07, 0.07, 0.05, 0.16, 0.09, 0.46][:len(show)]
        t = ax.table(cellText=cells, colLabels=show, loc="upper left", cellLoc="left",
                     colLoc="left", colWidths=widths)
        t.auto_set_font_size(False)
        t.set_fontsize(7.5)
        lines = max(c.count("\n") + 1 for row in cells for c in row)
        for (row, _col), cell in t.get_celld().items():
            cell.set_height(0.12 * (lines if row else 1))
    else:
        ax.text(0.01, 0.5, "no open regression", fontsize=11)

    # regression marks: when each open regression's series first appears
    _panel, (aq,) = _find(dashboards, ANNOTATION)
    first: Dict[tuple, float] = {}
    for s in prom.range(concrete(aq.expr, values, rate), start, end, step):
        if s["values"]:
            key = tuple(sorted(s["metric"].items()))
            first[key] = min(first.get(key, float("inf")), float(s["values"][0][0]))
    marks = [(t, dict(k).get("status", "")) for k, t in first.items()]

    for i, where in enumerate(TIMESERIES):
        ax = fig.add_subplot(grid[1 + i // 2, i % 2])
        panel, qs = _find(dashboards, where)
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        ax.set_title(panel["title"], loc="left", fontsize=11)
        series = []
        for q in qs:
            for s in prom.range(concrete(q.expr, values, rate), start, end, step):
                xs = [_ts(float(t)) for t, _v in s["values"]]
                ys = [float(v) for _t, v in s["values"]]
                series.append((legend(q.legend, s["metric"]), xs, ys, s["metric"]))
        series.sort(key=lambda s: s[0])
        stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode") == "normal"
        if stacked and series:
            # align on the union of timestamps, missing = 0, as Grafana stacks
            xs_all = sorted({x for _l, xs, _y, _m in series for x in xs})
            ys_all = []
            for _l, xs, ys, _m in series:
                m = dict(zip(xs, ys))
                ys_all.append([m.get(x, 0.0) for x in xs_all])
            ax.stackplot(xs_all, ys_all, labels=[s[0] for s in series], alpha=0.8)
        else:
            for label, xs, ys, metric in series:
                style = "--" if metric.get("bound") in ("low", "high") else "-"
                ax.plot(xs, ys, style, lw=1.2, label=label)
        for v, colour in [(s["value"], s["color"]) for s in
                          panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
                          if s["value"] is not None]:
            ax.axhline(v, color=COLOURS.get(colour, colour), lw=0.8, ls=":")
        for t, status in marks:
            ax.axvline(_ts(t), color=COLOURS["red"] if status == "confirmed" else COLOURS["orange"],
                       lw=1, alpha=0.7)
        ax.set_ylabel({"MiBs": "MiB/s", "cps": "per second", "suffix:x": "new / baseline",
                       "short": "hosts"}.get(unit, unit))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=6.5, loc="upper left", ncol=2 if len(series) > 6 else 1,
                      framealpha=0.8)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center")
    fig.text(0.01, 0.005, f"Prometheus time (UTC) {_ts(start):%Y-%m-%d %H:%M:%S} – {_ts(end):%H:%M:%S}; "
             "vertical lines: regressions opened (red confirmed, orange suspected); dotted: thresholds",
             fontsize=8)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    if not path.is_file():
        raise ServiceError(f"render: {path} was not written")
    return path
