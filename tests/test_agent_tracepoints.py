"""The tracepoint collector: its parsers against this kernel's captured tracefs format
files, and its counts on the real kernel (root), checked against ``perf stat`` with the
same filters, on ext4 and on a loop-mounted XFS; without privilege it says it is off
and why while the other collectors keep working."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from loopfs import loop_fs as real_loop_fs, run_checked as _run

from foliowatch.agent.collectors import buddyinfo, tracepoints as tp
from foliowatch.agent.config import AgentConfig, TracepointsConfig, load

agent39 = pytest.mark.agent39
# kernel counts are system-wide (compaction, reclaim) and the fragmentation step fills
# memory with page cache: nothing else runs beside this module
pytestmark = pytest.mark.serial

MIB = 1 << 20
FIX = Path(__file__).resolve().parent / "fixtures" / "agent" / "x86_64-6.18-4k"
TRACEFS_FIX = FIX / "sys/kernel/tracing"
DEFAULT = tp.parse_buckets(tp.DEFAULT_BUCKETS)


def _formats(root: Path = TRACEFS_FIX):
    out = {}
    for ev in tp.EVENTS:
        f = tp.read_event_format(str(root), ev)
        if f is not None:
            out[ev] = f
    return out


# -- parsers -------------------------------------------------------------------------
@agent39
def test_buckets_parse_and_reject_gaps_overlaps_and_closed_ends():
    assert [b.name for b in DEFAULT] == ["order_0", "order_1_3", "order_4_7", "order_8_up"]
    assert [b.filter() for b in DEFAULT] == [
        "order == 0", "order >= 1 && order <= 3", "order >= 4 && order <= 7", "order >= 8"]
    assert tp.parse_buckets(["0-3", "4+"]) == [tp.Bucket(0, 3), tp.Bucket(4, None)]
    for bad, msg in ((["1-3", "4+"], "starting at order 0"), (["0", "2+"], "starting at order 1"),
                     (["0", "1-3"], "last range must be open"), (["0", "3-1", "4+"], "ends below"),
                     (["0+", "1+"], "only the last"), (["0", "x"], "not an order range"),
                     ([], "last range must be open")):
        with pytest.raises(ValueError, match=msg):
            tp.parse_buckets(bad)


@agent39
def test_format_files_give_fields_and_the_kernels_flag_and_status_values():
    f = _formats()
    assert set(f) == set(tp.EVENTS)
    assert f[tp.EV_FILEMAP].fields["order"] == "unsigned char"
    assert f[tp.EV_FILEMAP].fields["s_dev"] == "dev_t"
    assert f[tp.EV_FILEMAP].id == 600
    try_fmt = f[tp.EV_TRY_COMPACT]
    assert try_fmt.fields["gfp_mask"] == "unsigned long"
    assert tp.flag_value(try_fmt.print_fmt, "__GFP_DIRECT_RECLAIM") == 1 << 10
    assert tp.flag_value(try_fmt.print_fmt, "__GFP_NORETRY") == 1 << 16
    assert tp.flag_value(try_fmt.print_fmt, "__GFP_RECLAIM") == (1 << 10) | (1 << 11)
    assert tp.flag_value(try_fmt.print_fmt, "__GFP_NOPE") is None
    assert tp.symbol_value(f[tp.EV_COMPACT_END].print_fmt, "success") == 8
    assert tp.symbol_value(f[tp.EV_COMPACT_END].print_fmt, "deferred") == 2


@agent39
def test_plan_counts_pagecache_per_order_and_the_rest_per_bucket():
    specs, problems = tp.plan(_formats(), DEFAULT, max_order=9, devices=[(7 << 20) | 3])
    assert problems == []
    by_key = {s.key: s for s in specs}
    assert [k for k in by_key if k.startswith("pagecache_")] == \
        [f"pagecache_order_{o}" for o in range(10)]
    assert by_key["pagecache_order_4"].filter == "(s_dev == 7340035) && order == 4"
    assert by_key["pagecache_order_9"].filter == "(s_dev == 7340035) && order >= 9"
    assert by_key["compact_try_order_4_7"].filter == "order >= 4 && order <= 7"
    assert by_key["compact_try_costly_direct"].filter == "order > 3 && gfp_mask & 1024"
    assert by_key["compact_end_success"].filter == "status == 8"
    assert by_key["direct_reclaim"].filter == ""


@agent39
def test_plan_names_each_missing_event_and_field_and_keeps_the_rest():
    f = _formats()
    del f[tp.EV_COMPACT_DEFERRED]
    old = f[tp.EV_FILEMAP]
    f[tp.EV_FILEMAP] = old._replace(fields={k: v for k, v in old.fields.items() if k != "order"})
    specs, problems = tp.plan(f, DEFAULT, max_order=9)
    keys = {s.key for s in specs}
    assert not any(k.startswith(("pagecache_", "compact_deferred")) for k in keys)
    assert "compact_try_order_0" in keys and "direct_reclaim" in keys
    assert any("compaction:mm_compaction_deferred: not in this kernel" in p for p in problems)
    assert any("filemap:mm_filemap_add_to_page_cache: no field order" in p for p in problems)


@agent39
def test_wire_counters_sum_orders_into_buckets_with_exact_bytes():
    counts = {"pagecache_order_0": 5, "pagecache_order_2": 1, "pagecache_order_4": 2,
              "pagecache_order_8": 3, "pagecache_order_9": 1, "compact_try_order_4_7": 7}
    out = tp.wire_counters(counts, DEFAULT, 4096)
    assert out["tp_pagecache_folios_order_0"] == 5
    assert out["tp_pagecache_bytes_order_1_3"] == 4 * 4096
    assert out["tp_pagecache_folios_order_4_7"] == 2
    assert out["tp_pagecache_bytes_order_4_7"] == 2 * 16 * 4096
    assert out["tp_pagecache_folios_order_8_up"] == 4
    assert out["tp_pagecache_bytes_order_8_up"] == 3 * MIB + 2 * MIB
    assert out["tp_compact_try_order_4_7"] == 7


@agent39
def test_kernel_dev_matches_the_tracepoints_encoding():
    assert tp.kernel_dev("254:0") == 254 << 20
    assert tp.kernel_dev("7:3") == (7 << 20) | 3


@agent39
def test_config_defaults_off_and_names_bad_keys():
    assert AgentConfig().tracepoints.enabled is False
    _cfg, problems = load(environ={"FOLIOWATCH_AGENT_TRACEPOINTS_ORDER_BUCKETS": "0,2+",
                                   "FOLIOWATCH_AGENT_TRACEPOINTS_PAGECACHE_DEVICES": "some",
                                   "FOLIOWATCH_AGENT_TRACEPOINTS_TRACEFS": "tracing"})
    assert any(p.startswith("config agent.tracepoints.order_buckets: '2+'") for p in problems)
    assert any(p.startswith("config agent.tracepoints.pagecache_devices: expected") for p in problems)
    assert any(p.startswith("config agent.tracepoints.tracefs: expected an absolute path")
               for p in problems)


# -- the events' files copied for an unprivileged agent ---------------------------------
@agent39
def test_export_copies_each_event_world_readable_and_replaces_an_old_copy_whole(tmp_path):
    src = tmp_path / "tracing"
    shutil.copytree(TRACEFS_FIX, src)
    shutil.rmtree(src / "events" / tp.EV_COMPACT_DEFERRED)     # a kernel without it
    dest = tmp_path / "state" / "tracefs-events"
    (dest / "events" / "old" / "gone").mkdir(parents=True)     # an earlier kernel's copy
    (dest / "events" / "old" / "gone" / "id").write_text("999\n")
    umask = os.umask(0o077)                                     # systemd's UMask= of the unit
    try:
        copied = tp.export_event_files(str(dest), [str(tmp_path / "absent"), str(src)])
    finally:
        os.umask(umask)
    assert copied == [e for e in tp.EVENTS if e != tp.EV_COMPACT_DEFERRED]
    assert not (dest / "events" / "old").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tracefs-events"]   # no staging left
    for path in [dest, *dest.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
    for event in copied:
        assert tp.read_event_format(str(dest), event) == tp.read_event_format(str(src), event)


@agent39
def test_export_without_tracefs_removes_the_old_copy_and_says_what_to_do(tmp_path):
    dest = tmp_path / "tracefs-events"
    shutil.copytree(TRACEFS_FIX, dest)
    with pytest.raises(tp.TracepointsUnavailable,
                       match="tracefs not mounted .*mount -t tracefs nodev /sys/kernel/tracing"):
        tp.export_event_files(str(dest), [str(tmp_path / "tracing")])
    assert not dest.exists()     # never an earlier kernel's event ids


@agent39
def test_collector_says_a_tracefs_setting_without_events_names_nothing_it_can_read(tmp_path):
    counters = tp.TracepointCounters(DEFAULT, tracefs=str(tmp_path / "tracefs-events"))
    counters.open()
    assert not counters.on
    assert counters.off_reason.startswith(f"agent.tracepoints.tracefs {tmp_path}/tracefs-events: "
                                          "no events/ folder in it")
    assert "--export-tracefs-events" in counters.off_reason


# -- the real kernel -------------------------------------------------------------------


@contextmanager
def loop_fs(fstype: str, size: int = 1 << 30):
    """A fresh ``fstype`` filesystem on a loop device; yields (mount point,
    "major:minor"). Only this test writes to it, so a device filter isolates its folios
    from the rest of the machine's page cache."""
    with real_loop_fs(fstype, size) as mnt:
        yield mnt, _run("findmnt", "-n", "-o", "MAJ:MIN", mnt).strip()


class PerfStat:
    """``perf stat -a`` with given (event, filter) pairs, started disabled and switched
    on and off through its control FIFO (so its window is exactly the test's)."""

    def __init__(self, pairs, workdir: Path):
        self.pairs = list(pairs)
        self.ctl, self.ack, self.out = workdir / "ctl", workdir / "ack", workdir / "perf.csv"
        os.mkfifo(self.ctl)
        os.mkfifo(self.ack)
        argv = ["perf", "stat", "-a", "-x", ",", "-D", "-1", "--control",
                f"fifo:{self.ctl},{self.ack}", "-o", str(self.out)]
        for event, filter_ in self.pairs:
            argv += ["-e", event.replace("/", ":")] + (["--filter", filter_] if filter_ else [])
        self.proc = subprocess.Popen(argv,   # -a without a command: runs until SIGINT
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.ctl_fd = os.open(self.ctl, os.O_RDWR)
        self.ack_fd = os.open(self.ack, os.O_RDWR)

    def _command(self, cmd: str) -> None:
        os.write(self.ctl_fd, cmd.encode() + b"\n")
        reply = os.read(self.ack_fd, 16)
        assert reply.startswith(b"ack"), f"perf stat did not acknowledge {cmd}: {reply!r}"

    def enable(self) -> None:
        self._command("enable")

    def disable(self) -> None:
        self._command("disable")

    def counts(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            _out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        os.close(self.ctl_fd)
        os.close(self.ack_fd)
        rows = [l.split(",") for l in self.out.read_text().splitlines()
                if l and not l.startswith("#")]
        assert len(rows) == len(self.pairs), f"perf stat: {self.out.read_text()} {err!r}"
        assert all(r[0].isdigit() for r in rows), f"perf stat could not count: {rows}"
        return [int(r[0]) for r in rows]


def write_file(path: str, chunk: int, count: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        buf = b"\x5a" * chunk
        for _ in range(count):
            os.write(fd, buf)
    finally:
        os.close(fd)


@agent39
def test_counts_are_read_once_per_cpu_and_equal_each_counters_own(tracefs, monkeypatch):
    with loop_fs("xfs") as (mnt, devno):
        # only the loop device's folios: nothing else adds to them between the reads
        counters = tp.TracepointCounters(DEFAULT, devices=[tp.kernel_dev(devno)])
        counters.open()
        try:
            assert counters.on, counters.off_reason
            write_file(f"{mnt}/large", MIB, 16)
            reads = []
            real_read = os.read
            monkeypatch.setattr(tp.os, "read", lambda fd, n: reads.append(fd) or real_read(fd, n))
            grouped = counters.raw_counts()
            monkeypatch.undo()
            one_by_one = dict.fromkeys(grouped, 0)
            for _leader, keys, fds in counters._groups:
                for key, fd in zip(keys, fds):
                    one_by_one[key] += tp.read_count(fd)
        finally:
            counters.close()
    cpus = tp.online_cpus()
    assert len(reads) == len(cpus) == len(set(reads)), reads
    pagecache = {k: v for k, v in grouped.items() if k.startswith("pagecache_")}
    assert sum(v << int(k.rsplit("_", 1)[1]) for k, v in pagecache.items()) * 4096 == 16 * MIB
    assert {k: one_by_one[k] for k in pagecache} == pagecache


@agent39
@pytest.mark.parametrize("fstype", ["xfs", "ext4"])
def test_buffered_writes_land_in_the_expected_buckets_and_agree_with_perf_stat(
        tracefs, fstype, tmp_path):
    with loop_fs(fstype) as (mnt, devno):
        counters = tp.TracepointCounters(DEFAULT, devices=[tp.kernel_dev(devno)])
        counters.open()
        try:
            assert counters.on, counters.off_reason
            assert counters.problems == []
            perf = PerfStat([(s.event, s.filter) for s in counters.specs
                             if s.event == tp.EV_FILEMAP], tmp_path)
            # perf's window nested inside ours: ours holds everything perf counts
            before = counters.raw_counts()
            perf.enable()
            write_file(f"{mnt}/large", MIB, 256)        # 1 MiB writes ask for order 8
            write_file(f"{mnt}/medium", 64 << 10, 64)   # 64 KiB: order 4
            write_file(f"{mnt}/small", 4096, 1024)      # 4 KiB: order 0
            perf.disable()
            after = counters.raw_counts()
            by_perf = perf.counts()
        finally:
            counters.close()
    delta = {k: after[k] - before[k] for k in after}
    ours = {s.key: delta[s.key] for s in counters.specs if s.event == tp.EV_FILEMAP}
    perf_by_key = dict(zip(ours, by_perf))
    # the same counts, except order-0 folios the filesystem adds on its own (ext4 does,
    # seen: 2) in the moments between the edges of the two windows
    order0 = "pagecache_order_0"
    assert {k: v for k, v in ours.items() if k != order0} == \
        {k: v for k, v in perf_by_key.items() if k != order0}
    assert perf_by_key[order0] <= ours[order0] <= perf_by_key[order0] + 8, (ours, perf_by_key)
    wire = tp.wire_counters(delta, DEFAULT, 4096)
    print(f"{fstype}: {wire}")
    large_bytes = wire["tp_pagecache_bytes_order_4_7"] + wire["tp_pagecache_bytes_order_8_up"]
    # every byte of the 1 MiB and 64 KiB writes sits in folios of order >= 4, most in 8+
    assert large_bytes == 256 * MIB + 4 * MIB
    assert wire["tp_pagecache_folios_order_8_up"] >= 200
    assert wire["tp_pagecache_folios_order_4_7"] >= 64
    assert wire["tp_pagecache_folios_order_1_3"] == 0
    # the 4 KiB writes: one order-0 folio each (the filesystem may add a few of its own)
    assert 1024 <= wire["tp_pagecache_folios_order_0"] <= 1024 + 64


UNPRIVILEGED_AGENT = r"""
import grp, json, logging, os, pwd, sys, time
# what the agent imports on first use, while the interpreter's own files are readable
import ctypes, difflib, select, signal, stat
from foliowatch.agent.config import AgentConfig, TracepointsConfig
from foliowatch.agent.deltas import Baseline
from foliowatch.agent.sampler import Sampler
# Become nobody here, after start-up: the interpreter may live where nobody cannot read
# it (pyenv under a root-only home). setuid from root to a non-root uid clears every
# capability, so from here on this is an unprivileged process.
os.setgroups([])
os.setgid(grp.getgrnam("nogroup").gr_gid)
os.setuid(pwd.getpwnam("nobody").pw_uid)
caps = {k: v for k, v in (line.split(":\t") for line in
        open("/proc/self/status").read().splitlines() if line.startswith("Cap"))}
assert os.geteuid() != 0 and int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0, caps
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
cfg = AgentConfig(host_id="unprivileged", mounts=["/"],
                  tracepoints=TracepointsConfig(enabled=True, tracefs=sys.argv[1]))
sampler = Sampler(cfg)
baseline = Baseline()
records = []
for seq in range(3):
    r = sampler.record(sampler.read(), baseline, seq)
    if r is not None:
        records.append(r)
    time.sleep(0.2)
print(json.dumps({"off": sampler.tracepoints.off_reason, "on": sampler.tracepoints.on,
                  "counters": records[-1]["counters"], "gauges": records[-1]["gauges"]}))
"""


def _run_as_nobody(tracefs_arg: str):
    assert os.geteuid() == 0, "dropping to nobody needs root"
    p = subprocess.run([sys.executable, "-c", UNPRIVILEGED_AGENT, tracefs_arg],
                       capture_output=True, text=True, timeout=120, cwd="/")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


def test_unprivileged_agent_says_once_why_tracepoints_are_off_and_keeps_collecting(tracefs):
    paranoid = Path("/proc/sys/kernel/perf_event_paranoid").read_text().strip()
    # 1. tracefs itself is root-only here: the event ids cannot be read
    out, err = _run_as_nobody("")
    assert out["on"] is False
    assert "permission denied" in out["off"] and "tracefs" in out["off"]
    # 2. the ids readable (this kernel's event files, copied as the unit's ExecStartPre
    # does): perf_event_open refuses
    parent = Path(tempfile.mkdtemp(prefix="foliowatch-tracefs-", dir="/tmp"))
    try:
        os.chmod(parent, 0o755)
        assert tp.export_event_files(str(parent / "copy")) == list(tp.EVENTS)
        out2, err2 = _run_as_nobody(str(parent / "copy"))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    print("unprivileged, tracefs unreadable:", out["off"])
    print(f"unprivileged, perf_event_paranoid = {paranoid}:", out2["off"])
    assert out2["on"] is False
    assert "perf_event_open(" in out2["off"]
    assert "Permission denied" in out2["off"] or "Operation not permitted" in out2["off"]
    assert "CAP_PERFMON" in out2["off"] and f"perf_event_paranoid = {paranoid}" in out2["off"]
    for o, e in ((out, err), (out2, err2)):
        # said once, though the agent sampled three times
        assert e.count("tracepoint counters are off") == 1, e
        assert not any(k.startswith("tp_") for k in o["counters"])
        # the other collectors kept working
        assert "compact_stall" in o["counters"] and "psi_memory_some_us" in o["counters"]
        assert "frag_unusable_1m" in o["gauges"]


def _meminfo(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return int(m.group(1)) * 1024


def _write_measured(counters, path: str, size: int):
    before = counters.raw_counts()
    write_file(path, MIB, size // MIB)
    after = counters.raw_counts()
    os.unlink(path)
    return tp.wire_counters({k: after[k] - before[k] for k in after}, DEFAULT, 4096)


def _large_share(w) -> float:
    total = sum(v for k, v in w.items() if k.startswith("tp_pagecache_bytes_"))
    return (w["tp_pagecache_bytes_order_4_7"] + w["tp_pagecache_bytes_order_8_up"]) / total


@agent39
def test_fragmented_memory_then_large_writes_reports_folio_orders_and_direct_compaction(
        tracefs):
    """Fragment free memory with order-0 page cache (a sparse file read 4 KiB at a time
    with readahead off fills memory as many small files would, without a million
    inodes; every other page is then dropped), then write 1 GiB in 1 MiB writes. What
    the kernel does then (smaller folios, or direct compaction to get the large ones)
    depends on the host, so it is printed, not assumed; the counts themselves are
    checked."""
    size = 1 << 30
    with loop_fs("xfs", size=64 << 30) as (mnt, devno):
        counters = tp.TracepointCounters(DEFAULT, devices=[tp.kernel_dev(devno)])
        counters.open()
        try:
            assert counters.on, counters.off_reason
            # start from a known memory state, not whatever earlier work left: clean page
            # cache dropped, free memory compacted
            os.sync()
            for knob, value in (("drop_caches", "1"), ("compact_memory", "1")):
                with open(f"/proc/sys/vm/{knob}", "w") as f:
                    f.write(value)
            fresh = _write_measured(counters, f"{mnt}/fresh", size)
            frag_before = buddyinfo.gauges(buddyinfo.read(), 4096)["frag_unusable_order_8"]
            fill = int(_meminfo("MemFree") * 1.2)   # past free: the writes must use the holes
            fd = os.open(f"{mnt}/fill", os.O_RDWR | os.O_CREAT)
            try:
                os.ftruncate(fd, fill)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                for off in range(0, fill, 4096):
                    os.pread(fd, 4096, off)
                for off in range(0, fill, 8192):
                    os.posix_fadvise(fd, off, 4096, os.POSIX_FADV_DONTNEED)
                frag_after = buddyinfo.gauges(buddyinfo.read(), 4096)["frag_unusable_order_8"]
                fragmented = _write_measured(counters, f"{mnt}/fragmented", size)
            finally:
                os.close(fd)
        finally:
            counters.close()
    for name, w in (("fresh memory", fresh), ("fragmented memory", fragmented)):
        # every byte written was counted in some bucket; under the memory pressure of
        # the fill the kernel may add a few more folios on the device (seen: 1 MiB)
        added = sum(v for k, v in w.items() if k.startswith("tp_pagecache_bytes_"))
        print(f"{name}: {added} bytes added to the page cache for {size} written")
        assert size <= added <= size + size // 100
        attempts = {k[len("tp_compact_try_"):]: v for k, v in w.items()
                    if k.startswith("tp_compact_try_order_")}
        print(f"{name}: large-folio share {_large_share(w):.4f}, folios by bucket "
              f"{[w['tp_pagecache_folios_' + b.name] for b in DEFAULT]}, direct compaction "
              f"attempts per GiB {attempts} (costly with __GFP_DIRECT_RECLAIM: "
              f"{w['tp_compact_try_costly_direct']}), compaction ended "
              f"{w['tp_compact_end']} (success {w['tp_compact_end_success']}), deferred "
              f"{w['tp_compact_deferred']}, direct reclaim {w['tp_direct_reclaim']}")
    print(f"unusable free space index at order 8: {frag_before:.3f} -> {frag_after:.3f} "
          f"(fill {fill >> 20} MiB, every other page dropped)")
    moved_down = _large_share(fragmented) < _large_share(fresh)
    print(f"folio order buckets moved down: {'yes' if moved_down else 'no'}; direct "
          f"compaction from the writes: "
          f"{'yes' if fragmented['tp_compact_try_costly_direct'] else 'no'}")
    assert frag_after > frag_before, "the fragmentation step did not fragment free memory"


@agent39
def test_agent_ships_and_serves_tracepoint_counts_when_enabled(tracefs, tmp_path):
    from foliowatch.agent.exporter import metrics
    from foliowatch.agent.runner import Agent
    from foliowatch import schema
    with loop_fs("xfs") as (mnt, devno):
        cfg = AgentConfig(state_dir=str(tmp_path / "state"), mounts=[mnt], kafka_enabled=False,
                          interval_s=1.0, tracepoints=TracepointsConfig(
                              enabled=True, pagecache_devices="watched"))
        agent = Agent(cfg)
        try:
            agent.tick(deliver=False)
            write_file(f"{mnt}/big", MIB, 64)
            record = agent.tick(deliver=False)
            text = metrics(agent).decode()
        finally:
            agent.close()
            assert agent.sampler.tracepoints._groups == []   # closed with the agent
    schema.validate(record)
    c = record["counters"]
    assert sum(c[f"tp_pagecache_bytes_{b.name}"] for b in DEFAULT) == 64 * MIB
    assert c["tp_pagecache_bytes_order_4_7"] + c["tp_pagecache_bytes_order_8_up"] == 64 * MIB
    assert "foliowatch_agent_tracepoints_enabled 1.0" in text
    folios = re.findall(r'^foliowatch_agent_tracepoint_pagecache_folios_total'
                        r'\{order_bucket="([^"]+)"\} ', text, re.M)
    assert folios == ["0", "1-3", "4-7", "8+"]
    assert re.search(r'^foliowatch_agent_tracepoint_compaction_attempts_costly_direct_reclaim'
                     r'_total \d', text, re.M)
    assert "foliowatch_agent_vmstat_tp_" not in text
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
