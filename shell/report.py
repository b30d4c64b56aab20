"""``foliowatch report``: what regressed, where, by how much, and what to do — as a
self-contained HTML page with PNG figures, and as a plain-text summary.

Inputs: the pipeline's Parquet dataset (``foliowatch/dataset.py``) and the detector's
state file (regression records). The numbers shown for a regression are the record's own
numbers; the figures are drawn from the dataset's host windows of the regressed cohort.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

from foliowatch import dashboards as _dashboards_pkg
from foliowatch.errors import InputError
from foliowatch.flags import add_output

METRIC_TITLES = {
    "write_mib_s": ("buffered write throughput", "MiB/s"),
    "compact_stall_per_s": ("direct compaction stalls", "stalls/s"),
    "allocstall_per_s": ("direct reclaim entries", "allocstalls/s"),
    "pgscan_direct_per_s": ("pages scanned by direct reclaim", "pages/s"),
    "psi_memory_some_share": ("memory pressure (PSI some)", "share of time"),
    "frag_unusable_1m": ("free memory unusable for 1 MiB blocks", "share"),
    "probe_mib_s": ("write probe throughput", "MiB/s"),
    "compact_try_costly_direct_per_gib": ("hosts attempting costly-order direct compaction",
                                          "share of hosts"),
}
COMPACTION_METRICS = {"compact_stall_per_s", "allocstall_per_s", "pgscan_direct_per_s",
                      "psi_memory_some_share", "compact_try_costly_direct_per_gib"}
# The mechanism figures shown by kernel (schema.MECHANISM_TABLE, from the agent's
# tracepoint counters), with the words the report uses for them
MECHANISM_TITLES = {
    "large_folio_share": ("large-folio share of page-cache bytes (order >= 4)", "{:.0%}"),
    "compact_try_costly_direct_per_gib": ("costly-order direct compaction attempts per GiB "
                                          "written", "{:,.1f}"),
}


class ReportError(InputError):
    """The state file or the dataset cannot make a report."""


@dataclass
class Finding:
    """One regression record, as the report shows it."""

    record: dict

    @property
    def cohort(self) -> str:
        r = self.record
        return (f"{r['fleet']}/{r['role']} {r['arch']} {_page(r['page_size'])} {r['fs']}")

    @property
    def slug(self) -> str:
        r = self.record
        raw = f"{r['fleet']}-{r['role']}-{r['arch']}-{r['page_size']}-{r['fs']}-{r['kernel_to']}"
        return "".join(c if c.isalnum() or c in "-." else "_" for c in raw)

    @property
    def headline(self) -> str:
        """The effect in the operator's terms (records of older state files have none)."""
        from foliowatch.detector.headline import record_headline
        return self.record.get("headline") or record_headline(self.record)

    def metric_rows(self) -> List[dict]:
        rows = list(self.record.get("metrics") or [])
        if not rows:
            rows = [{k: self.record.get(k) for k in ("metric", "statistic", "effect", "ci_low",
                                                     "ci_high", "effect_kind", "p_value",
                                                     "q_value")}]
        return rows


def _page(size: int) -> str:
    return f"{int(size) // 1024}K pages"


def format_effect(row: dict) -> str:
    eff, lo, hi = row.get("effect"), row.get("ci_low"), row.get("ci_high")
    if eff is None:
        return "?"
    kind = row.get("effect_kind") or "ratio"
    if kind == "ratio":
        return f"{eff:.2f}x [{lo:.2f}, {hi:.2f}]"
    return f"{eff:+.3f} [{lo:+.3f}, {hi:+.3f}] ({kind})"


def load_records(state_path: Path) -> List[dict]:
    try:
        data = json.loads(Path(state_path).read_text())
    except FileNotFoundError:
        raise ReportError(f"state file {state_path} not found: run `foliowatch detect "
                          f"--state {state_path}` first") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"state file {state_path}: not JSON ({e})") from None
    if not isinstance(data, dict) or "records" not in data:
        raise ReportError(f"state file {state_path}: no 'records' list; is it a foliowatch "
                          "detector state file?")
    return list(data["records"])


def _parse_ts(text: Optional[str]) -> Optional[datetime]:
    if not text:
        return None
    t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def next_steps(rec: dict) -> List[str]:
    """What an engineer should do, in order, for this record."""
    f, k_from, k_to = rec["fleet"], rec["kernel_from"], rec["kernel_to"]
    metrics = {m.get("metric") for m in (rec.get("metrics") or [])} | {rec.get("metric")}
    steps = []
    if rec["status"] == "resolved":
        steps.append(f"Resolved ({rec.get('resolution') or 'no longer seen'}). Keep "
                     f"{k_to} blocked for {f} until a fixed kernel passes "
                     f"`foliowatch verdict --fleet {f} --kernel <fixed kernel>`.")
        return steps
    steps.append(f"Pause the rollout of {k_to} to fleet {f} ({rec['arch']}, {rec['fs']}): "
                 f"`foliowatch verdict --fleet {f} --kernel {k_to}` exits 1 while this is open. "
                 f"Roll affected hosts back to {k_from} if the loss is unacceptable.")
    if metrics & COMPACTION_METRICS or "write_mib_s" in metrics:
        steps.append(
            f"Bisect {k_from}..{k_to} on one {rec['arch']} host with fragmented memory "
            "(the effect needs fragmentation: test after days of uptime, or fragment memory "
            "first, then run the agent's write probe). Look first at fs/iomap/buffered-io.c "
            "(large-folio allocation in the buffered-write path, e.g. 5d8edfb900d5 \"iomap: "
            "Copy larger chunks from userspace\") and mm/page_alloc.c (direct compaction for "
            "costly orders); check whether the new kernel carries the page-allocator change "
            "that avoids direct compaction for costly __GFP_NORETRY allocations.")
        steps.append(
            "On an affected host, confirm the signature: `grep -E "
            "'compact_(stall|fail|success)|allocstall|pgscan_direct' /proc/vmstat` rising "
            "with writes; `cat /proc/buddyinfo` (few free high-order blocks); "
            "`sysctl vm.compaction_proactiveness vm.extfrag_threshold`; "
            f"`findmnt -no OPTIONS` of the {rec['fs']} data mount; "
            "`perf stat -e compaction:mm_compaction_try_to_compact_pages -a sleep 10` shows "
            "the orders that compact.")
    return steps


def dashboard_files() -> List[Path]:
    """The generated Grafana dashboards installed with the package (import them into
    Grafana, provision them from deploy/grafana/, or `foliowatch dashboards push`)."""
    return sorted((Path(_dashboards_pkg.__file__).parent / "generated").glob("*.json"))


def text_summary(findings: List[Finding], dataset_note: str = "",
                 mechanism: Optional[Dict[str, List[dict]]] = None) -> str:
    if not findings:
        return "foliowatch: no regression records." + (f" {dataset_note}" if dataset_note else "")
    lines = []
    order = {"confirmed": 0, "suspected": 1, "resolved": 2}
    for fd in sorted(findings, key=lambda f: (order.get(f.record["status"], 3),
                                              -float(f.record.get("impact") or 0))):
        r = fd.record
        lines.append(f"{r['status'].upper():9s} {fd.cohort}: {r['kernel_from']} -> {r['kernel_to']}")
        lines.append(f"    {fd.headline}")
        lines.append("    evidence:")
        for m in fd.metric_rows():
            q = m.get("q_value")
            lines.append(f"    {m.get('metric')} ({m.get('statistic') or 'median'}): "
                         f"{format_effect(m)}" + (f"  q={q:.2g}" if q is not None else ""))
        lines.append(f"    hosts compared: {r.get('hosts_new')} on {r['kernel_to']} vs "
                     f"{r.get('hosts_base')} on {r['kernel_from']}; first detected "
                     f"{r.get('first_detected_at')}")
        rows = (mechanism or {}).get(fd.slug)
        if rows:
            lines.append("    mechanism (tracepoints, since the new kernel was first seen):")
            for row in rows:
                lines.append(f"    {row['kernel']}: " + "; ".join(
                    f"{title} {_mechanism_value(row, name)}"
                    for name, (title, _) in MECHANISM_TITLES.items())
                    + f" ({row['hosts']} hosts)")
        for i, s in enumerate(next_steps(r), 1):
            lines.append(f"    {i}. {s}")
    return "\n".join(lines)


def _cohort_windows(dataset: Path, rec: dict, window_s: int):
    """The host windows of the record's cohort (every kernel), or None when there are none."""
    import polars as pl

    from foliowatch.detector.frames import DatasetReadError, collect_host_windows

    root = Path(dataset) / "level=host" / f"window_s={window_s}"

    def query(lf):
        filt = ((pl.col("fleet") == rec["fleet"]) & (pl.col("arch") == rec["arch"])
                & (pl.col("page_size") == int(rec["page_size"])) & (pl.col("fs") == rec["fs"]))
        if "role" in lf.collect_schema().names() and rec.get("role"):
            filt = filt & (pl.col("role") == rec["role"])
        return lf.filter(filt)

    try:    # the detector's reader: whole files even while the pipeline replaces some
        parts = collect_host_windows(str(dataset), window_s, query)
    except FileNotFoundError:
        raise ReportError(f"dataset {dataset}: no host windows under {root}; run "
                          "`foliowatch pipeline` first (or pass the right --dataset)") from None
    except DatasetReadError as e:
        raise ReportError(str(e)) from None
    df = parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")
    return None if df.is_empty() else df


def _cohort_series(dataset: Path, rec: dict, window_s: int):
    import polars as pl

    df = _cohort_windows(dataset, rec, window_s)
    if df is None:
        return None
    span = (df["window_start"].max() - df["window_start"].min()).total_seconds()
    bucket = "1m" if span <= 6 * 3600 else ("10m" if span <= 3 * 86400 else "1h")
    metrics = [m for m in ("write_mib_s", "compact_stall_per_s") if m in df.columns]
    agg = (df.sort("window_start")
             .group_by_dynamic("window_start", every=bucket, group_by="kernel")
             .agg([pl.col(m).median().alias(m) for m in metrics]
                  + [pl.col("host_id").n_unique().alias("hosts")])
             .sort("window_start"))
    return agg


def _mechanism_value(row: dict, name: str) -> str:
    v = row.get(name)
    return "n/a" if v is None else MECHANISM_TITLES[name][1].format(v)


def mechanism_by_kernel(dataset: Path, rec: dict, window_s: int = 60) -> List[dict]:
    """The cohort's mechanism figures per kernel (baseline and new), pooled over its
    hosts' windows since the new kernel was first seen (the pipeline's pooling of
    ``schema.MECHANISM_TABLE``), and how many hosts report them; empty when no host runs
    the tracepoint collector."""
    import polars as pl

    from foliowatch import schema as wire
    from foliowatch.pipeline.aggregate import pooled_mechanism_aggs

    df = _cohort_windows(dataset, rec, window_s)
    needed = {f"{c}_sum" for r in wire.MECHANISM_TABLE for c in r.numerator + r.denominator}
    if df is None or not needed <= set(df.columns):
        return []
    since = _parse_ts(rec.get("new_kernel_first_seen"))
    if since is not None:
        df = df.filter(pl.col("window_start") >= since)
    reporting = pl.any_horizontal([pl.col(c).is_not_null() for c in sorted(needed)])
    pooled = (df.filter(pl.col("kernel").is_in([rec["kernel_from"], rec["kernel_to"]]))
              .group_by("kernel")
              .agg(pooled_mechanism_aggs()
                   + [pl.col("host_id").filter(reporting).n_unique().alias("hosts")]))
    rows = []
    for kernel in (rec["kernel_from"], rec["kernel_to"]):
        row = next((r for r in pooled.iter_rows(named=True) if r["kernel"] == kernel), None)
        if row and row["hosts"]:
            rows.append({"kernel": kernel, "hosts": int(row["hosts"]),
                         **{n: row[n] for n in MECHANISM_TITLES}})
    return rows


def figure_png(dataset: Path, rec: dict, window_s: int = 60) -> Optional[bytes]:
    """Write throughput and compaction stalls by kernel over time, with the share of the
    cohort's hosts on the new kernel (the rollout waves) and the detection marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    agg = _cohort_series(dataset, rec, window_s)
    if agg is None:
        return None
    k_from, k_to = rec["kernel_from"], rec["kernel_to"]
    fig, axes = plt.subplots(3, 1, figsize=(10, 8.2), sharex=True,
                             gridspec_kw={"height_ratios": [3, 3, 1.4]})
    colors = {k_from: "#1f77b4", k_to: "#d62728"}
    for ax, metric in zip(axes[:2], ("write_mib_s", "compact_stall_per_s")):
        if metric not in agg.columns:
            continue
        for kernel in (k_from, k_to):
            sub = agg.filter(pl.col("kernel") == kernel)
            if sub.is_empty():
                continue
            ax.plot(sub["window_start"].to_list(), sub[metric].to_list(),
                    color=colors[kernel], lw=1.4, label=f"{kernel} (median of hosts)")
        title, unit = METRIC_TITLES[metric]
        ax.set_ylabel(unit)
        ax.set_title(title, loc="left", fontsize=11)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=9)
    hosts = (agg.pivot(on="kernel", index="window_start", values="hosts", aggregate_function="sum")
               .fill_null(0).sort("window_start"))
    on_new = hosts[k_to].to_list() if k_to in hosts.columns else [0] * hosts.height
    total = hosts.select(sum(pl.col(c) for c in hosts.columns if c != "window_start")).to_series()
    axes[2].fill_between(hosts["window_start"].to_list(), on_new, step="post",
                         color=colors[k_to], alpha=0.35)
    axes[2].set_ylim(0, max(1, max(on_new, default=0)) * 1.25)
    axes[2].set_ylabel("hosts")
    axes[2].set_title(f"rollout: hosts of the cohort on {k_to} (of {int(total.max() or 0)})",
                      loc="left", fontsize=11)
    axes[2].grid(alpha=0.3)
    detected = _parse_ts(rec.get("first_detected_at"))
    first_seen = _parse_ts(rec.get("new_kernel_first_seen"))
    for ax in axes:
        if first_seen:
            ax.axvline(first_seen, color="grey", ls=":", lw=1.2)
        if detected:
            ax.axvline(detected, color="black", ls="--", lw=1.2)
    if detected:
        axes[0].annotate("detected", xy=(detected, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(4, -12), textcoords="offset points", fontsize=9)
    if first_seen:
        axes[0].annotate("first canary", xy=(first_seen, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(4, -24), textcoords="offset points", fontsize=9, color="grey")
    fig.suptitle(f"{rec['fleet']}/{rec['role']} {rec['arch']} {rec['fs']}: "
                 f"{k_from} -> {k_to}", fontsize=12, x=0.01, ha="left")
    fig.autofmt_xdate()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1080px;color:#1b1f24}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 6px}
.muted{color:#57606a} .card{border:1px solid #d0d7de;border-radius:8px;padding:14px 18px;margin:14px 0}
.confirmed{border-left:6px solid #cf222e} .suspected{border-left:6px solid #bf8700} .resolved{border-left:6px solid #1a7f37}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.b-confirmed{background:#cf222e}.b-suspected{background:#bf8700}.b-resolved{background:#1a7f37}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
th{background:#f6f8fa} code{background:#f6f8fa;padding:1px 4px;border-radius:4px} img{max-width:100%}
ol li{margin:4px 0}
"""


def render_html(findings: List[Finding], figures: Dict[str, bytes], generated: str,
                dataset: str, mechanism: Optional[Dict[str, List[dict]]] = None) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>foliowatch report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>foliowatch: kernel rollout regressions</h1>",
             f"<div class='muted'>generated {esc(generated)} from <code>{esc(dataset)}</code></div>"]
    open_ = [f for f in findings if f.record["status"] != "resolved"]
    if not findings:
        parts.append("<div class='card resolved'><b>No regression found.</b></div>")
    else:
        parts.append("<div class='card'><b>Summary.</b><ul>")
        for fd in findings:
            r = fd.record
            parts.append(f"<li><span class='badge b-{esc(r['status'])}'>{esc(r['status'])}</span> "
                         f"<b>{esc(fd.cohort)}</b>: {esc(r['kernel_from'])} &rarr; "
                         f"<b>{esc(r['kernel_to'])}</b>: {esc(fd.headline)}</li>")
        parts.append(f"</ul>{len(open_)} open.</div>")
    for fd in findings:
        r = fd.record
        parts.append(f"<div class='card {esc(r['status'])}'><h2>{esc(fd.cohort)}: "
                     f"{esc(r['kernel_from'])} &rarr; {esc(r['kernel_to'])} "
                     f"<span class='badge b-{esc(r['status'])}'>{esc(r['status'])}</span></h2>")
        parts.append(f"<p class='headline'><b>{esc(fd.headline)}</b></p>")
        parts.append(f"<div class='muted'>first detected {esc(str(r.get('first_detected_at')))}"
                     f"; new kernel first seen {esc(str(r.get('new_kernel_first_seen')))}; "
                     f"hosts compared: {r.get('hosts_new')} new vs {r.get('hosts_base')} baseline"
                     f" over {r.get('windows')} windows; impact {float(r.get('impact') or 0):.1f}</div>")
        parts.append("<table><tr><th>metric</th><th>statistic</th><th>effect (new / baseline) "
                     "[95% interval]</th><th>p</th><th>q (BH)</th></tr>")
        for m in fd.metric_rows():
            title = METRIC_TITLES.get(str(m.get("metric")), (m.get("metric"), ""))[0]
            p, q = m.get("p_value"), m.get("q_value")
            parts.append(f"<tr><td>{esc(str(title))} (<code>{esc(str(m.get('metric')))}</code>)"
                         f"</td><td>{esc(str(m.get('statistic') or 'median'))}</td>"
                         f"<td>{esc(format_effect(m))}</td>"
                         f"<td>{'' if p is None else f'{p:.2g}'}</td>"
                         f"<td>{'' if q is None else f'{q:.2g}'}</td></tr>")
        parts.append("</table>")
        rows = (mechanism or {}).get(fd.slug)
        if rows:
            parts.append("<p><b>Mechanism</b> <span class='muted'>(agent tracepoint counters, "
                         "pooled over the hosts running the collector since the new kernel "
                         "was first seen)</span></p><table class='mechanism'><tr><th>kernel</th>"
                         + "".join(f"<th>{esc(t)}</th>" for t, _ in MECHANISM_TITLES.values())
                         + "<th>hosts</th></tr>")
            for row in rows:
                parts.append(f"<tr><td>{esc(row['kernel'])}</td>"
                             + "".join(f"<td>{esc(_mechanism_value(row, n))}</td>"
                                       for n in MECHANISM_TITLES)
                             + f"<td>{row['hosts']}</td></tr>")
            parts.append("</table>")
        if fd.slug in figures:
            b64 = base64.b64encode(figures[fd.slug]).decode()
            parts.append(f"<img alt='write throughput and compaction stalls by kernel' "
                         f"src='data:image/png;base64,{b64}'>")
        if r.get("reasons"):
            parts.append("<p><b>Why:</b></p><ul>" + "".join(f"<li>{esc(str(x))}</li>"
                                                          for x in r["reasons"]) + "</ul>")
        parts.append("<p><b>What to do next:</b></p><ol>"
                     + "".join(f"<li>{esc(s)}</li>" for s in next_steps(r)) + "</ol></div>")
    parts.append("<div class='card'><b>Watch it live in Grafana.</b> The dashboards, as JSON to "
                 "import or provision (<code>deploy/grafana/</code>), or pushed with "
                 "<code>foliowatch dashboards push</code>:<ul>"
                 + "".join(f"<li><a href='{esc(path.as_uri())}'>{esc(path.name)}</a></li>"
                           for path in dashboard_files()) + "</ul></div>")
    parts.append("</body></html>")
    return "".join(parts)


def build(dataset: Path, state: Path, out_dir: Path, window_s: int = 60,
          include_resolved: bool = True) -> Path:
    """Write report.html and one PNG per regression into ``out_dir``; return the HTML path."""
    records = load_records(state)
    findings = [Finding(r) for r in records if include_resolved or r["status"] != "resolved"]
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: Dict[str, bytes] = {}
    mechanism: Dict[str, List[dict]] = {}
    for fd in findings:
        png = figure_png(dataset, fd.record, window_s)
        if png:
            figures[fd.slug] = png
            (out_dir / f"{fd.slug}.png").write_bytes(png)
        mechanism[fd.slug] = mechanism_by_kernel(dataset, fd.record, window_s)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = out_dir / "report.html"
    page.write_text(render_html(findings, figures, generated, str(dataset), mechanism))
    (out_dir / "summary.txt").write_text(
        text_summary(findings, mechanism=mechanism) + "\n\nGrafana dashboards (import, provision or "
        "`foliowatch dashboards push`):\n" + "".join(f"  {p}\n" for p in dashboard_files()))
    return page


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset root written by `foliowatch pipeline`")
    parser.add_argument("--state", required=True, help="the detector's state file (regression records)")
    add_output(parser, default="foliowatch-report", old=("--out",),
               help="output folder (default ./foliowatch-report)")
    parser.add_argument("--window-s", type=int, default=60, help="host window length to plot (default 60)")
    parser.add_argument("--open-only", action="store_true", help="leave resolved regressions out")


def run(args) -> int:
    page = build(Path(args.dataset), Path(args.state), Path(args.output), args.window_s,
                 include_resolved=not args.open_only)
    print((Path(args.output) / "summary.txt").read_text(), end="")
    print(f"report: {page}")
    return 0
