"""The collectors' parsers against real and composed kernel files, and against this
machine's live /proc and /sys."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from foliowatch import schema
from foliowatch.agent.collectors import (buddyinfo, diskstats, labels, meminfo, pressure,
                                         thp, vmstat, xfs)
from foliowatch.agent.config import AgentConfig
from foliowatch.agent.deltas import Baseline
from foliowatch.agent.sampler import Sampler

pytestmark = pytest.mark.agent39

FIX = Path(__file__).resolve().parent / "fixtures" / "agent"
X86 = FIX / "x86_64-6.18-4k"
ARM4K = FIX / "arm64-6.6-4k"
ARM64K = FIX / "arm64-6.8-64k"
ALL = [X86, ARM4K, ARM64K]


def text(path: Path) -> str:
    return path.read_text()


# -- vmstat -------------------------------------------------------------------------
@pytest.mark.parametrize("tree", ALL, ids=lambda p: p.name)
def test_vmstat_parses_every_line_and_selects_compaction_and_reclaim(tree):
    raw = text(tree / "proc/vmstat")
    fields = vmstat.parse(raw)
    assert len(fields) == len([l for l in raw.splitlines() if l.strip()])
    c = vmstat.counters(fields)
    for name in ("compact_stall", "compact_fail", "compact_success", "compact_migrate_scanned",
                 "compact_free_scanned", "compact_isolated", "compact_daemon_wake",
                 "allocstall_normal", "allocstall_movable", "pgscan_direct", "pgsteal_direct",
                 "pgscan_kswapd", "thp_fault_alloc", "thp_fault_fallback", "thp_file_alloc",
                 "thp_file_fallback", "pgpgout", "nr_dirtied", "nr_written"):
        assert c[name] == fields[name]
    # gauges are not shipped as counters
    for name in ("nr_free_pages", "nr_dirty", "thp_file_mapped", "nr_dirty_threshold"):
        assert name not in c


def test_vmstat_fields_absent_on_a_kernel_stay_absent():
    old = vmstat.counters(vmstat.parse(text(ARM4K / "proc/vmstat")))
    new = vmstat.counters(vmstat.parse(text(X86 / "proc/vmstat")))
    assert "pgscan_proactive" in new and "pgscan_proactive" not in old
    assert "thp_underused_split_page" in new and "thp_underused_split_page" not in old


def test_vmstat_shipped_counters_from_the_remembered_layout_equal_a_full_scan():
    """parse_counters remembers the layout of the shipped lines (as a pattern of the
    whole text); a text whose lines moved, changed or broke is scanned in full again,
    never read at the old places."""
    texts = {tree.name: text(tree / "proc/vmstat") for tree in ALL}
    x86 = texts["x86_64-6.18-4k"]
    lines = x86.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("compact_stall "))
    variants = [
        x86, x86.replace("compact_stall ", "compact_stall 1", 1),  # "compact_stall 1<n>"
        "".join(lines[:at] + ["compact_stall 12 13\n"] + lines[at + 1:]),   # 3 fields
        "".join(lines[:at] + ["compact_stall x\n"] + lines[at + 1:]),       # not a number
        "".join(lines[:at] + ["compact_stall  7\n"] + lines[at + 1:]),      # two spaces
        "".join(lines[:at] + ["compact_stalls 7\n"] + lines[at + 1:]),      # renamed
        "".join(lines[:at] + [lines[at + 1], lines[at]] + lines[at + 2:]),  # swapped
        "".join(lines[:at] + ["compact_stall -3\n"] + lines[at + 1:]),      # signed
        *texts.values(), x86]
    assert vmstat.scan_counters(x86) == vmstat.counters(vmstat.parse(x86))
    for raw in texts.values():
        vmstat.parse_counters(raw)
        assert vmstat._layout is not None and vmstat._layout[0].fullmatch(raw)
    for raw in variants:
        vmstat.parse_counters(x86)                       # the layout of a real kernel
        expected = vmstat.scan_counters(raw)
        assert vmstat.parse_counters(raw) == expected
        assert vmstat.parse_counters(raw) == expected   # the second from its layout


def test_vmstat_skips_malformed_lines():
    assert vmstat.parse("compact_stall 5\ngarbage\nnr_x notanumber\npgpgout 7 8\n") == \
        {"compact_stall": 5}
    assert vmstat.allocstall_total({"allocstall_normal": 3, "allocstall_movable": 4}) == 7
    assert vmstat.allocstall_total({"compact_stall": 1}) is None


# -- pressure -----------------------------------------------------------------------
def test_pressure_totals_in_microseconds():
    t = pressure.parse(text(ARM4K / "proc/pressure/memory"))
    assert t == {"some": 88123011223, "full": 21339120044}
    assert pressure.counters("memory", t) == {"psi_memory_some_us": 88123011223,
                                              "psi_memory_full_us": 21339120044}
    # cpu has only "some" on older kernels; parse keeps what is there
    assert pressure.parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n") == {"some": 42}


def test_pressure_absent_when_kernel_has_no_psi(tmp_path):
    assert pressure.read("memory", str(tmp_path)) is None
    assert pressure.read_all(str(tmp_path)) == {}


def test_pressure_read_all_on_fixture_gives_the_four_schema_counters():
    got = pressure.read_all(str(ARM64K / "proc"))
    assert set(got) == {"psi_memory_some_us", "psi_memory_full_us", "psi_io_some_us",
                        "psi_io_full_us"}


# -- buddyinfo ----------------------------------------------------------------------
def test_buddyinfo_order_count_follows_the_kernel_build():
    assert {len(z.free_blocks) for z in buddyinfo.parse(text(X86 / "proc/buddyinfo"))} == {11}
    assert {len(z.free_blocks) for z in buddyinfo.parse(text(ARM4K / "proc/buddyinfo"))} == {11}
    zones = buddyinfo.parse(text(ARM64K / "proc/buddyinfo"))
    assert {len(z.free_blocks) for z in zones} == {14}
    assert [(z.node, z.zone) for z in zones] == [(0, "DMA"), (0, "Normal"), (1, "Normal")]


def test_unusable_index_by_hand():
    # 4 free order-0 pages, 2 order-1 blocks (4 pages), 1 order-3 block (8 pages): 16 free
    blocks = [4, 2, 0, 1]
    assert buddyinfo.free_pages(blocks) == 16
    assert buddyinfo.unusable_index(blocks, 0) == 0.0
    assert buddyinfo.unusable_index(blocks, 1) == 4 / 16
    assert buddyinfo.unusable_index(blocks, 2) == 8 / 16
    assert buddyinfo.unusable_index(blocks, 3) == 8 / 16
    assert buddyinfo.unusable_index(blocks, 4) is None         # beyond MAX_PAGE_ORDER
    assert buddyinfo.unusable_index([0, 0, 0], 1) is None      # no free memory: undefined


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=14))
def test_unusable_index_is_a_share_and_grows_with_order(blocks):
    values = [buddyinfo.unusable_index(blocks, j) for j in range(len(blocks))]
    if buddyinfo.free_pages(blocks) == 0:
        assert values == [None] * len(blocks)
        return
    assert values[0] == 0.0
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)


@pytest.mark.parametrize("page_size,order", [(4096, 8), (16384, 6), (65536, 4)])
def test_one_mib_block_order_depends_on_page_size(page_size, order):
    assert buddyinfo.order_of(1 << 20, page_size) == order


def test_frag_gauges_64k_use_order_4_and_sum_all_zones():
    zones = buddyinfo.parse(text(ARM64K / "proc/buddyinfo"))
    g = buddyinfo.gauges(zones, 65536)
    blocks = [sum(z.free_blocks[i] for z in zones) for i in range(14)]
    total = sum(n << i for i, n in enumerate(blocks))
    expected = (total - sum(n << i for i, n in enumerate(blocks) if i >= 4)) / total
    assert g["frag_unusable_1m"] == pytest.approx(expected)
    assert g["frag_unusable_1m"] == g["frag_unusable_order_4"]
    assert "frag_unusable_order_13" in g and "frag_unusable_order_14" not in g
    assert g["buddy_free_bytes"] == total * 65536
    # the composed host is fragmented: most free memory is unusable for 1 MiB blocks
    assert 0.5 < g["frag_unusable_1m"] < 1.0


def test_frag_gauges_are_monotonic_in_order():
    for tree, page in ((X86, 4096), (ARM4K, 4096), (ARM64K, 65536)):
        g = buddyinfo.gauges(buddyinfo.parse(text(tree / "proc/buddyinfo")), page)
        orders = sorted(int(k.rsplit("_", 1)[1]) for k in g if k.startswith("frag_unusable_order_"))
        values = [g[f"frag_unusable_order_{o}"] for o in orders]
        assert values == sorted(values)
        assert all(0.0 <= v <= 1.0 for v in values)


# -- diskstats, meminfo -------------------------------------------------------------
def test_diskstats_write_bytes_are_512_byte_sectors():
    d = diskstats.parse(text(ARM4K / "proc/diskstats"))
    nvme1 = d["nvme1n1"]
    assert (nvme1.major, nvme1.minor) == (259, 2)
    assert nvme1.write_ios == 91203310
    assert nvme1.write_bytes == 81920331872 * 512
    assert diskstats.by_devno(d)["259:2"] is nvme1
    assert diskstats.mount_counters(nvme1) == {"write_bytes": 81920331872 * 512,
                                               "write_ios": 91203310}


@pytest.mark.parametrize("tree", ALL, ids=lambda p: p.name)
def test_diskstats_of_the_watched_devices_are_their_lines_of_the_whole_table(tree):
    raw = text(tree / "proc/diskstats")
    every = diskstats.parse(raw)
    by_devno = diskstats.by_devno(every)
    for picked in ([], list(by_devno)[:1], list(by_devno)[-2:], list(by_devno)):
        assert diskstats.parse_devices(raw, picked) == \
            {d.name: d for devno, d in by_devno.items() if devno in picked}
    # numbers are matched whole: 8:1 is not 8:16, 18:1 nor 8:10
    table = "   8       1 sda1 1 0 2 0 3 0 4 0 0 0 0 0 0 0 0\n" \
            "   8      16 sdb 1 0 2 0 3 0 4 0 0 0 0 0 0 0 0\n" \
            "  18       1 x 1 0 2 0 3 0 4 0 0 0 0 0 0 0 0\n" \
            "   8      10 y 1 0 2 0 3 0 4 0 0 0 0 0 0 0 0\n"
    assert list(diskstats.parse_devices(table, ["8:1"])) == ["sda1"]
    assert diskstats.parse_devices(table, ["9:1"]) == {}


def test_diskstats_real_capture_has_loop_device_with_the_32_mib_written():
    d = diskstats.parse(text(X86 / "proc/diskstats"))
    assert d["loop0"].write_bytes >= 32 << 20


def test_meminfo_kb_to_bytes():
    m = meminfo.parse(text(ARM64K / "proc/meminfo"))
    assert m["MemTotal"] == 133954560 * 1024
    assert meminfo.gauges(m)["mem_available_bytes"] == 98120448 * 1024.0


# -- xfs ----------------------------------------------------------------------------
def test_xfs_xpc_and_rw_lines_from_the_real_capture():
    stats = xfs.parse(text(X86 / "sys/fs/xfs/loop0/stats/stats"))
    c = xfs.counters(stats)
    assert c["xfs_write_bytes"] == 32 << 20     # dd wrote exactly 32 MiB through write(2)
    assert c["xfs_write_calls"] == 32
    assert c["xfs_xstrat_bytes"] == 67043328
    assert xfs.read("loop0", str(X86 / "sys")) == stats
    assert xfs.read("nvme9n9", str(X86 / "sys")) is None


def test_xfs_counters_absent_for_lines_the_kernel_lacks():
    assert xfs.counters(xfs.parse("rw 3 4\n")) == {"xfs_write_calls": 3, "xfs_read_calls": 4}


# -- thp ----------------------------------------------------------------------------
def test_thp_settings_take_the_bracketed_choice():
    assert thp.parse_choice("always defer defer+madvise [madvise] never\n") == "madvise"
    assert thp.parse_choice("1\n") == "1"
    s = thp.read_settings(str(X86 / "sys"))
    assert s == {"thp_enabled": "madvise", "thp_defrag": "madvise",
                 "thp_shmem_enabled": "never", "thp_khugepaged_defrag": "1"}


def test_mthp_counters_present_on_6_18_absent_before_6_10():
    new = thp.read_mthp_counters(str(X86 / "sys"))
    assert new["mthp_2048kb_anon_fault_alloc"] == int(text(
        X86 / "sys/kernel/mm/transparent_hugepage/hugepages-2048kB/stats/anon_fault_alloc"))
    assert "mthp_8kb_shmem_alloc" in new and "mthp_8kb_anon_fault_alloc" not in new
    assert thp.read_mthp_counters(str(ARM64K / "sys")) == {}
    assert thp.read_mthp_counters(str(ARM4K / "sys")) == {}


# -- labels and mounts ----------------------------------------------------------------
def test_arch_normalised_to_schema_names():
    assert labels.normalise_arch("aarch64") == "arm64"
    assert labels.normalise_arch("x86_64") == "x86_64"
    assert labels.normalise_arch("AMD64") == "x86_64"


def test_mountinfo_parse_with_optional_fields_and_escapes():
    line = "61 22 259:2 / /var/lib/my\\040db rw,noatime shared:31 master:2 - xfs /dev/nvme1n1 rw\n"
    (m,) = labels.parse_mountinfo(line)
    assert m == labels.Mount("/var/lib/my db", "xfs", "259:2", "/dev/nvme1n1")


def test_find_mount_picks_the_longest_prefix():
    mounts = labels.parse_mountinfo(text(ARM4K / "proc/self/mountinfo"))
    assert labels.find_mount(mounts, "/var/lib/pgsql").devno == "259:2"
    assert labels.find_mount(mounts, "/var/lib/pgsqlx").mount == "/"


def test_clean_label_keeps_schema_alphabet():
    assert labels.clean_label("6.6.87-101.amzn2023.aarch64") == "6.6.87-101.amzn2023.aarch64"
    assert labels.clean_label("Standard PC (Q35 + ICH9, 2009)") == "Standard_PC_Q35_+_ICH9_2009"
    assert schema.LABEL_RE.match(labels.clean_label("  weird/instance:type "))


# -- the sampler on fixture trees -------------------------------------------------------
def _bump(tree: Path, dst: Path, factor: int = 2) -> None:
    """A later reading of the same host: every counter line grown."""
    shutil.copytree(tree, dst)
    vm = dst / "proc/vmstat"
    vm.write_text("".join(f"{k} {int(v) * factor + 1}\n" for k, v in
                          (l.split() for l in vm.read_text().splitlines())))
    ds = dst / "proc/diskstats"
    rows = []
    for line in ds.read_text().splitlines():
        p = line.split()
        p[9] = str(int(p[9]) + 2048)      # +1 MiB of sectors written
        p[7] = str(int(p[7]) + 8)         # +8 writes
        rows.append(" ".join(p))
    ds.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("tree,mount,device,page", [
    (ARM4K, "/var/lib/pgsql", "nvme1n1", 4096), (ARM64K, "/data", "dm-0", 65536)],
    ids=["arm64-4k", "arm64-64k"])
def test_sampler_on_fixture_trees_emits_valid_records(tmp_path, tree, mount, device, page,
                                                      monkeypatch):
    t1, t2 = tmp_path / "t1", tmp_path / "t2"
    shutil.copytree(tree, t1)
    _bump(tree, t2)
    cfg = AgentConfig(mounts=[mount])
    s1 = Sampler(cfg, proc=str(t1 / "proc"), sys=str(t1 / "sys"), etc=str(t1 / "etc"))
    s2 = Sampler(cfg, proc=str(t2 / "proc"), sys=str(t2 / "sys"), etc=str(t2 / "etc"))
    # the fixture's mount points do not exist here: resolve them from the fixture's table
    monkeypatch.setattr(os.path, "exists", lambda p: True)
    monkeypatch.setattr(os.path, "realpath", lambda p: p)
    s1.page_size = s2.page_size = page
    base = Baseline()
    assert s1.record(s1.read(), base) is None          # first reading: baseline only
    r2 = s2.read()
    rec = s2.record(r2, base, seq=5)
    schema.validate(rec)
    v1 = vmstat.counters(vmstat.parse(text(t1 / "proc/vmstat")))
    assert rec["counters"]["compact_stall"] == v1["compact_stall"] + 1
    assert rec["host_id"] == text(tree / "etc/machine-id").strip()
    (m,) = rec["mounts"]
    assert (m["mount"], m["fs"], m["device"]) == (mount, "xfs", device)
    assert m["counters"]["write_bytes"] == 1 << 20 and m["counters"]["write_ios"] == 8
    assert "mthp_64kb_anon_fault_alloc" not in rec["counters"]
    assert rec["gauges"]["frag_unusable_1m"] == rec["gauges"][
        f"frag_unusable_order_{buddyinfo.order_of(1 << 20, page)}"]
    assert rec["settings"]["thp_enabled"] == "madvise"
    assert rec["labels"]["page_size"] == page
    assert rec["labels"]["mem_bytes"] == meminfo.read(str(t2 / "proc"))["MemTotal"]


# -- deltas and baselines ----------------------------------------------------------------
def test_reboot_starts_a_new_baseline():
    b = Baseline()
    assert b.advance("boot-a", 100.0, {"c": {"x": 10}}) is None
    assert b.advance("boot-a", 110.0, {"c": {"x": 15}}) == (10.0, {"c": {"x": 5}})
    assert b.advance("boot-b", 5.0, {"c": {"x": 2}}) is None
    assert b.advance("boot-b", 15.0, {"c": {"x": 4}}) == (10.0, {"c": {"x": 2}})


def test_counter_going_backwards_is_rebased_not_negative():
    b = Baseline()
    b.advance("a", 0.0, {"c": {"x": 100, "y": 5}})
    interval, d = b.advance("a", 10.0, {"c": {"x": 3, "y": 9}})
    assert d == {"c": {"y": 4}} and b.resets == 1
    assert b.advance("a", 20.0, {"c": {"x": 7, "y": 9}})[1] == {"c": {"x": 4, "y": 0}}


def test_new_counter_new_section_and_long_gap():
    b = Baseline()
    b.advance("a", 0.0, {"c": {"x": 1}})
    assert b.advance("a", 10.0, {"c": {"x": 2, "new": 50}, "m\x1f/\x1fsda": {"w": 9}})[1] == \
        {"c": {"x": 1}, "m\x1f/\x1fsda": {}}
    assert b.resets == 0
    assert b.advance("a", 10.0 + 3601, {"c": {"x": 3, "new": 60}}) is None   # gap > limit
    restored = Baseline.from_json(b.to_json())
    assert restored.advance("a", 3621.0, {"c": {"x": 5, "new": 61}})[1] == \
        {"c": {"x": 2, "new": 1}}


def test_the_state_files_baseline_keeps_its_flat_form():
    """state.json holds one key per counter, "<section>\\x1f<name>", as before the
    baseline kept sections: a state file written by either version is read by both."""
    b = Baseline()
    b.advance("a", 1.0, {"c": {"x": 1}, "m\x1f/data\x1fnvme1n1": {"write_bytes": 7}})
    assert b.to_json()["values"] == {"c\x1fx": 1, "m\x1f/data\x1fnvme1n1\x1fwrite_bytes": 7}
    old = {"boot_id": "a", "clock": 1.0,
           "values": {"c\x1fx": 1, "m\x1f/data\x1fnvme1n1\x1fwrite_bytes": 7, "junk": 3}}
    assert Baseline.from_json(old).values == {"c": {"x": 1},
                                              "m\x1f/data\x1fnvme1n1": {"write_bytes": 7}}


# -- this machine's real files -------------------------------------------------------------
def test_real_host_collectors_read_this_kernel():
    fields = vmstat.read()
    assert "compact_stall" in fields and "allocstall_normal" in fields
    zones = buddyinfo.read()
    assert zones and all(len(z.free_blocks) == len(zones[0].free_blocks) for z in zones)
    assert diskstats.read()
    assert meminfo.read()["MemTotal"] > 0
    assert labels.boot_id()
    page = os.sysconf("SC_PAGE_SIZE")
    g = buddyinfo.gauges(zones, page)
    assert 0.0 <= g["frag_unusable_1m"] <= 1.0


def test_real_host_deltas_agree_with_counters_read_independently(tmp_path):
    """Independent reads bracket the sampler's: a <= agent1 <= b ... c <= agent2 <= d, so
    c - b <= delta <= d - a for every monotonic counter."""
    s = Sampler(AgentConfig(mounts=["/"]))
    base = Baseline()
    a = vmstat.read(); da = diskstats.read()
    s.record(s.read(), base)
    b = vmstat.read(); db = diskstats.read()
    with open(tmp_path / "f", "wb") as f:           # make the counters move
        f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())
    c = vmstat.read(); dc = diskstats.read()
    rec = s.record(s.read(), base, seq=1)
    d = vmstat.read(); dd = diskstats.read()
    schema.validate(rec)
    checked = 0
    for name, delta in rec["counters"].items():
        if name in a and name in d:
            assert c[name] - b[name] <= delta <= d[name] - a[name], name
            checked += 1
    assert checked > 30
    assert rec["counters"]["nr_dirtied"] >= (4 << 20) // os.sysconf("SC_PAGE_SIZE")
    (m,) = rec["mounts"]
    dev = m["device"]
    assert dc[dev].write_bytes - db[dev].write_bytes <= m["counters"]["write_bytes"] \
        <= dd[dev].write_bytes - da[dev].write_bytes
    assert m["counters"]["write_bytes"] >= 4 << 20    # the fsync'd 4 MiB reached the disk
    psi = pressure.read_all()
    for name in psi:
        assert name in rec["counters"]


@given(st.text(max_size=400))
def test_parsers_never_raise_on_unexpected_text(text_):
    """A kernel that prints something unexpected must cost a field, not the sample."""
    vmstat.parse(text_)
    pressure.parse(text_)
    buddyinfo.parse(text_)
    diskstats.parse(text_)
    meminfo.parse(text_)
    xfs.parse(text_)
    labels.parse_mountinfo(text_)
    thp.parse_choice(text_)


@pytest.mark.parametrize("tree", ALL, ids=lambda p: p.name)
def test_the_per_sample_parsers_agree_with_the_full_ones(tree):
    """What a sample uses (one pass, only the shipped fields) equals the full parse
    filtered, on every captured kernel and on this one."""
    for raw in (text(tree / "proc/vmstat"), open("/proc/vmstat").read()):
        assert vmstat.parse_counters(raw) == vmstat.counters(vmstat.parse(raw))
    for raw in (text(tree / "proc/meminfo"), open("/proc/meminfo").read()):
        assert meminfo.parse_shipped(raw) == {k: v for k, v in meminfo.parse(raw).items()
                                              if k in meminfo.SHIPPED}


def test_uptime_of_the_real_proc_is_the_kernels_uptime_file():
    """The real /proc's uptime is taken from CLOCK_BOOTTIME, the clock /proc/uptime
    prints (in hundredths of a second): the two agree; a fixture tree is read as a file."""
    before = labels.parse_uptime(open("/proc/uptime").read())
    ours = labels.uptime_s()
    after = labels.parse_uptime(open("/proc/uptime").read())
    assert before <= ours <= after and round(ours, 2) == ours
    assert labels.uptime_s(str(X86 / "proc")) == labels.parse_uptime(text(X86 / "proc/uptime"))


def proc_stat_btime() -> float:
    with open("/proc/stat") as f:
        return next(float(line.split()[1]) for line in f if line.startswith("btime "))


def test_running_kernel_is_this_kernels_release_and_boot_time():
    """The release `uname -r` prints and the boot time the kernel reports in /proc/stat
    (btime, whole seconds); a fixture tree's uptime is its file's."""
    import subprocess
    release, booted_at = labels.running_kernel()
    assert release == subprocess.run(["uname", "-r"], capture_output=True, text=True,
                                     check=True).stdout.strip()
    assert abs(booted_at - proc_stat_btime()) <= 1.5
    uptime = labels.parse_uptime(text(X86 / "proc/uptime"))
    before = time.time()
    _, fixture_boot = labels.running_kernel(str(X86 / "proc"))
    assert before - uptime <= fixture_boot <= time.time() - uptime


def test_kernel_files_stay_open_and_are_read_anew(tmp_path):
    """procfs files are kept open between reads and still give fresh text each time;
    other files are opened per read (a fixture replaced meanwhile is seen)."""
    from foliowatch.agent.collectors import _io
    a = labels.parse_uptime(_io.read_text("/proc/uptime"))
    time.sleep(0.05)
    assert labels.parse_uptime(_io.read_text("/proc/uptime")) > a and "/proc/uptime" in _io._fds
    f = tmp_path / "vmstat"
    f.write_text("compact_stall 1\n")
    assert _io.read_lines(str(f)) == "compact_stall 1\n"
    f.unlink()
    f.write_text("compact_stall 2\n")
    assert _io.read_lines(str(f)) == "compact_stall 2\n" and str(f) not in _io._fds


@given(st.lists(st.lists(st.integers(0, 10**7), min_size=11, max_size=11), min_size=1,
                max_size=4), st.sampled_from([4096, 16384, 65536]))
def test_frag_gauges_equal_the_index_order_by_order(rows, page):
    zones = [buddyinfo.ZoneFree(0, f"z{i}", r) for i, r in enumerate(rows)]
    g = buddyinfo.gauges(zones, page)
    blocks = buddyinfo.total_blocks(zones)
    for order in range(1, 11):
        assert g.get(f"frag_unusable_order_{order}") == buddyinfo.unusable_index(blocks, order)
    assert g.get("frag_unusable_1m") == buddyinfo.unusable_index(
        blocks, buddyinfo.order_of(1 << 20, page))
    assert g["buddy_free_bytes"] == buddyinfo.free_pages(blocks) * page


def test_a_file_longer_than_one_kernel_page_is_read_whole():
    """seq_file gives one page per read: a /proc or tracefs file over 4 KiB (vmstat on
    newer kernels, event formats) must still come back whole."""
    from foliowatch.agent.collectors import _io
    with open("/proc/self/maps") as f:        # not kept open (/proc/self), may be long
        pass
    big = "/proc/kallsyms" if os.access("/proc/kallsyms", os.R_OK) else "/proc/self/smaps"
    whole = open(big, "rb").read()
    got = _io.read_bytes(big)
    assert len(whole) > 8192 and abs(len(got) - len(whole)) < len(whole) // 10


def test_sysfs_attributes_read_in_one_read_are_whole():
    """THP's sysfs attributes (and XFS stats) are taken from one read when it returns less
    than asked: each is the same as the file read to its end."""
    from foliowatch.agent.collectors import _io
    files = [p for p in Path("/sys/kernel/mm/transparent_hugepage").rglob("*")
             if p.is_file() and os.access(p, os.R_OK)]
    assert files
    for p in files:
        try:
            whole = p.read_bytes()
        except OSError:
            continue
        assert _io.read_bytes(str(p)) == whole, p
        assert _io.read_bytes(str(p)) == whole, p   # again, from the kept-open file


@pytest.mark.parametrize("name", ["meminfo", "pressure/memory", "pressure/io", "uptime",
                                  "buddyinfo", "diskstats", "vmstat"])
def test_procfs_files_read_in_one_short_read_are_whole(name):
    """A procfs file whose first read returns less than half a page is taken from that
    read: it holds every line of the file read to its end (the numbers move between
    the two reads, the names do not)."""
    from foliowatch.agent.collectors import _io
    import re

    def shape(text):
        return [[re.sub(r"[0-9]+(?:[.][0-9]+)?", "N", tok) for tok in line.split()]
                for line in text.splitlines()]
    path = f"/proc/{name}"
    with open(path) as f:
        whole = f.read()
    ours = _io.read_text(path)
    assert ours.endswith("\n")
    assert shape(ours) == shape(whole)


def test_watched_mounts_follow_a_mount_made_after_the_start(tmp_path):
    """The minute's refresh re-reads /proc/self/mountinfo only when the kernel reports a
    mount or unmount since the last read (or a watched path is missing): a mount made on
    a watched path after the start is followed, and so is its unmount."""
    import subprocess
    watched = tmp_path / "data"
    watched.mkdir()
    s = Sampler(AgentConfig(mounts=["/", str(watched)]))
    try:
        before = s.watched_mounts()
        assert str(watched) not in [m.mount for m in before]
        s._mounts_at = -1e18                       # a minute later, nothing changed
        assert s.watched_mounts() == before and not s._mount_table.changed()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(watched)], check=True)
        try:
            assert s.watched_mounts() == before    # within the minute
            s._mounts_at = -1e18
            assert (str(watched), "tmpfs") in [(m.mount, m.fs) for m in s.watched_mounts()]
        finally:
            subprocess.run(["umount", str(watched)], check=True)
        s._mounts_at = -1e18
        assert s.watched_mounts() == before
    finally:
        s.close()
