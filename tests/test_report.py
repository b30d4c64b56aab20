"""`foliowatch report` renders from a fixture dataset; its numbers are the records' numbers."""
import re
from datetime import datetime, timedelta, timezone

import polars as pl

from foliowatch.shell.cli import main as cli
from foliowatch.detector.records import RegressionRecord, RegressionState

T0 = datetime(2026, 11, 2, 0, 0, tzinfo=timezone.utc)


def _fixture_dataset(root, hosts=40, minutes=180, canary_at=60):
    """Host windows of one cohort: 10% of hosts move to the new kernel at `canary_at` and
    write at 0.75x with 8x compaction stalls from then on."""
    rows = []
    for h in range(hosts):
        for m in range(minutes):
            new = h < hosts // 10 and m >= canary_at
            rows.append({
                "window_start": T0 + timedelta(minutes=m), "window_s": 60,
                "fleet": "payments-db", "role": "postgres", "arch": "arm64", "page_size": 4096,
                "fs": "xfs", "kernel": "6.12.40-63.aarch64" if new else "6.6.87-101.aarch64",
                "host_id": f"h{h:03d}", "boot_id": f"b{h}-{int(new)}",
                "instance_type": "m8g.24xlarge", "cpus": 96, "mem_bytes": 2**38, "samples": 6,
                "write_mib_s": (300.0 + h) * (0.75 if new else 1.0),
                "compact_stall_per_s": 0.5 * (8.0 if new else 1.0),
            })
    df = pl.DataFrame(rows).with_columns(pl.col("window_start").dt.cast_time_unit("us"))
    out = root / "level=host" / "window_s=60" / "date=2026-11-02"
    out.mkdir(parents=True)
    df.write_parquet(out / "part-p0-0-1.parquet")
    return root


def _record(status="confirmed"):
    now = (T0 + timedelta(minutes=85)).isoformat()
    return RegressionRecord(
        id="payments-db/postgres/arm64/4096/xfs/6.6.87-101.aarch64->6.12.40-63.aarch64",
        fleet="payments-db", role="postgres", arch="arm64", page_size=4096, fs="xfs",
        kernel_from="6.6.87-101.aarch64", kernel_to="6.12.40-63.aarch64", status=status,
        metric="write_mib_s", statistic="median", effect=0.7512, ci_low=0.7031, ci_high=0.7968,
        effect_kind="ratio", p_value=3.1e-7, q_value=2.2e-6, hosts_new=4, hosts_base=36,
        hosts_in_group=40, impact=0.9951, windows=25, first_detected_at=now, updated_at=now,
        new_kernel_first_seen=(T0 + timedelta(minutes=60)).isoformat(),
        metrics=[{"metric": "write_mib_s", "statistic": "median", "effect": 0.7512,
                  "ci_low": 0.7031, "ci_high": 0.7968, "effect_kind": "ratio",
                  "p_value": 3.1e-7, "q_value": 2.2e-6},
                 {"metric": "compact_stall_per_s", "statistic": "p90", "effect": 8.04,
                  "ci_low": 6.51, "ci_high": 9.93, "effect_kind": "ratio",
                  "p_value": 1.0e-9, "q_value": 1.4e-8}],
        reasons=["write throughput down and compaction stalls up on the same hosts"])


def _report(tmp_path, ds, output="rep") -> int:
    """`foliowatch report` over ``ds`` with a state file holding ``_record()``."""
    state = RegressionState(str(tmp_path / "state.json"))
    rec = _record()
    state.records[rec.id] = rec
    state.save()
    return cli(["report", "--dataset", str(ds), "--state", str(tmp_path / "state.json"),
                "--output", str(tmp_path / output)])


def test_report_numbers_equal_the_records(tmp_path, capsys):
    ds = _fixture_dataset(tmp_path / "ds")
    state = RegressionState(str(tmp_path / "state.json"))
    rec = _record()
    state.records[rec.id] = rec
    state.save()

    rc = cli(["report", "--dataset", str(ds), "--state", str(tmp_path / "state.json"),
              "--output", str(tmp_path / "rep")])
    assert rc == 0
    text = capsys.readouterr().out
    page = (tmp_path / "rep" / "report.html").read_text()

    for m in rec.metrics:
        shown = f"{m['effect']:.2f}x [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"
        assert shown in page and shown in text
        assert f"{m['q_value']:.2g}" in page
    assert "0.75x [0.70, 0.80]" in text
    assert f"{rec.hosts_new} new vs {rec.hosts_base} baseline" in page
    assert "CONFIRMED" in text and "6.6.87-101.aarch64 -> 6.12.40-63.aarch64" in text
    assert "Pause the rollout of 6.12.40-63.aarch64" in page
    # the figure is embedded (self-contained) and written as a PNG file
    pngs = list((tmp_path / "rep").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"src='data:image/png;base64,[A-Za-z0-9+/=]{1000,}'", page)


def test_report_without_records_says_so(tmp_path, capsys):
    ds = _fixture_dataset(tmp_path / "ds")
    RegressionState(str(tmp_path / "state.json")).save()
    assert cli(["report", "--dataset", str(ds), "--state", str(tmp_path / "state.json"),
                "--output", str(tmp_path / "rep")]) == 0
    assert "no regression" in capsys.readouterr().out.lower()
    assert "No regression found" in (tmp_path / "rep" / "report.html").read_text()


def test_report_names_a_missing_state_file(tmp_path, capsys):
    rc = cli(["report", "--dataset", str(tmp_path), "--state", str(tmp_path / "nope.json"),
              "--output", str(tmp_path / "rep")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nope.json" in err and "foliowatch detect" in err


def test_report_names_an_empty_dataset(tmp_path, capsys):
    state = RegressionState(str(tmp_path / "state.json"))
    rec = _record()
    state.records[rec.id] = rec
    state.save()
    rc = cli(["report", "--dataset", str(tmp_path / "empty"), "--state", str(tmp_path / "state.json"),
              "--output", str(tmp_path / "rep")])
    assert rc == 2
    assert "no host windows" in capsys.readouterr().err


def test_report_links_the_generated_dashboards(tmp_path, capsys):
    ds = _fixture_dataset(tmp_path / "ds")
    assert _report(tmp_path, ds) == 0
    page = (tmp_path / "rep" / "report.html").read_text()
    summary = (tmp_path / "rep" / "summary.txt").read_text()
    from foliowatch.dashboards.generate import DASHBOARDS, GENERATED_DIR
    for name in DASHBOARDS:
        path = GENERATED_DIR / name
        assert path.is_file()
        assert f"href='{path.as_uri()}'" in page
        assert str(path) in summary


def test_report_shows_the_mechanism_figures_by_kernel(tmp_path, capsys):
    # tracepoint sums on every host window: the baseline keeps 90% of its page-cache bytes
    # in large folios and never compacts at a costly order; the new kernel's canaries get
    # 50% and attempt 100 costly direct compactions per GiB written (1 GiB a window)
    from foliowatch import schema as wire
    ds = _fixture_dataset(tmp_path / "ds")
    f = ds / "level=host" / "window_s=60" / "date=2026-11-02" / "part-p0-0-1.parquet"
    df = pl.read_parquet(f)
    new = pl.col("kernel") == "6.12.40-63.aarch64"
    gib = float(1 << 30)
    large = pl.when(new).then(0.5 * gib).otherwise(0.9 * gib)
    sums = {f"tp_pagecache_bytes_{b}_sum": pl.lit(0.0) for b in wire.ORDER_BUCKETS}
    sums.update({f"tp_compact_try_{b}_sum": pl.lit(0.0) for b in wire.ORDER_BUCKETS})
    sums.update({"tp_pagecache_bytes_order_0_sum": gib - large,
                 "tp_pagecache_bytes_order_8_up_sum": large,
                 "tp_compact_try_order_8_up_sum": pl.when(new).then(100.0).otherwise(0.0),
                 "tp_compact_try_costly_direct_sum": pl.when(new).then(100.0).otherwise(0.0),
                 "write_bytes_sum": pl.lit(gib)})
    df.with_columns(**sums).write_parquet(f)
    assert _report(tmp_path, ds) == 0
    text = capsys.readouterr().out
    page = (tmp_path / "rep" / "report.html").read_text()
    assert ("6.6.87-101.aarch64: large-folio share of page-cache bytes (order >= 4) 90%; "
            "costly-order direct compaction attempts per GiB written 0.0 (36 hosts)") in text
    assert ("6.12.40-63.aarch64: large-folio share of page-cache bytes (order >= 4) 50%; "
            "costly-order direct compaction attempts per GiB written 100.0 (4 hosts)") in text
    assert ("<tr><td>6.12.40-63.aarch64</td><td>50%</td><td>100.0</td><td>4</td></tr>"
            in page)
    assert "<tr><td>6.6.87-101.aarch64</td><td>90%</td><td>0.0</td><td>36</td></tr>" in page
    # without the collector's counters the report says nothing about the mechanism
    pl.read_parquet(f).drop(list(sums)).write_parquet(f)
    assert _report(tmp_path, ds, "rep2") == 0
    assert "mechanism" not in capsys.readouterr().out
