"""`foliowatch demo` end to end on a small fleet: real Kafka, Prometheus, agent, pipeline
and detector processes; it must find the regression it injects and nothing else, exit 0,
and leave no process or listening port behind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# serial: "no new listening port" holds only while nothing else starts services
# the demo's own limit (subprocess timeout=1500 below) fires first, with its output
pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.serial, pytest.mark.timeout(1600)]


def _listening_ports():
    ports = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(f).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A":  # LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def _processes_mentioning(text):
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append((int(d.name), cmd[:200]))
    return found


def test_demo_detects_the_injected_regression_and_cleans_up(tmp_path):
    workdir = tmp_path / "demo"
    before = _listening_ports()
    p = subprocess.run(
        [sys.executable, "-m", "foliowatch", "demo", "--hosts", os.environ.get("DEMO_HOSTS", "3000"),
         "--interval", "60", "--speed", "3000", "--output", str(workdir), "--plain"],
        capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]

    truth = json.loads((workdir / "ground_truth.json").read_text())
    injected = [t for t in truth if t["type"] == "cohort" and t["expected"] == "regression"]
    records = json.loads((workdir / "detector-state.json").read_text())["records"]
    flagged = [r for r in records if r["status"] in ("suspected", "confirmed")]
    assert flagged, out[-4000:]
    keys = ("fleet", "arch", "page_size", "fs", "kernel_from", "kernel_to")
    for r in flagged:  # nothing but injected regressions
        assert any(all(r[k] == c[k] for k in keys) for c in injected), r["id"]
    main = [r for r in flagged if (r["arch"], r["page_size"], r["fs"]) == ("arm64", 4096, "xfs")]
    assert main and main[0]["kernel_to"] == "6.12.40-63.aarch64"
    assert "REGRESSION" in out
    # the gate answers for the regressed kernel: stop (1) once confirmed, wait (2) while suspected
    expected_gate = 1 if main[0]["status"] == "confirmed" else 2
    assert f"verdict payments-db 6.12.40-63.aarch64: exit {expected_gate}" in out
    # the page reaches the demo's own webhook receiver through Prometheus and Alertmanager
    if main[0]["status"] == "confirmed":
        assert "ALERT delivered to payments-db-oncall: FIRING" in out, out[-4000:]
    assert (workdir / "report" / "report.html").exists()

    # nothing left behind: no process that mentions the workdir, no new listening port
    assert _processes_mentioning(str(workdir)) == []
    broker_port = int((workdir / "kafka" / "node1" / "broker.port").read_text())
    left = _listening_ports() - before
    assert broker_port not in left and not left, left
