"""The write probe on a real XFS filesystem: an image formatted with mkfs.xfs and
loop-mounted by the test. If the kernel refuses the mount the test fails: no skip."""

from __future__ import annotations

import os
import pwd
import time

import pytest
from loopfs import loop_fs, run_checked as _run

from foliowatch import schema
from foliowatch.agent.collectors import diskstats, labels, probe, xfs
from foliowatch.agent.config import AgentConfig, ProbeConfig
from foliowatch.agent.runner import Agent

pytestmark = pytest.mark.agent39
MIB = 1 << 20




@pytest.fixture(scope="module")
def xfs_mount():
    """A 512 MiB XFS filesystem on a loop device; yields (mount point, device name)."""
    with loop_fs("xfs", 512 * MIB) as mnt:
        source = _run("findmnt", "-n", "-o", "SOURCE", mnt).strip()
        device = os.path.basename(source)
        assert os.path.exists(f"/sys/fs/xfs/{device}/stats/stats"), \
            f"XFS mounted on {device} but /sys/fs/xfs/{device}/stats is missing"
        yield mnt, device


def _nobody_dir(mnt: str, name: str) -> str:
    path = os.path.join(mnt, name)
    os.makedirs(path, exist_ok=True)
    pw = pwd.getpwnam("nobody")
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _kernel_counts(device: str):
    disk = diskstats.read()[device]
    x = xfs.counters(xfs.read(device))
    return disk.write_bytes, disk.write_ios, x["xfs_write_bytes"], x["xfs_write_calls"]


def test_probe_bytes_agree_with_xfs_and_diskstats(xfs_mount):
    mnt, device = xfs_mount
    directory = _nobody_dir(mnt, "probe")
    before = _kernel_counts(device)
    result = probe.run_as("nobody", directory, 64 * MIB, MIB, max_seconds=60,
                          min_free_bytes=16 * MIB, min_free_ratio=0.0)
    after = _kernel_counts(device)
    p = result["probe"]
    assert p["bytes"] == 64 * MIB and p["chunk_bytes"] == MIB
    assert p["mib_s"] == pytest.approx(p["bytes"] / p["seconds"] / MIB)
    # XFS counted exactly the probe's write(2) calls and bytes: nothing else writes here
    assert after[2] - before[2] == p["bytes"]
    assert after[3] - before[3] == 64
    # fsync pushed the data to the device: at least the probe's bytes, plus a little
    # metadata and log, reached the loop device
    assert p["bytes"] <= after[0] - before[0] <= p["bytes"] + 16 * MIB
    assert after[1] > before[1]
    # the file is gone, and the compaction/reclaim deltas are reported
    assert os.listdir(directory) == []
    assert {"compact_stall", "allocstall"} <= set(result["vmstat"])
    assert p["compact_stall"] == result["vmstat"]["compact_stall"]


def test_probe_runs_unprivileged_when_agent_is_root(xfs_mount):
    mnt, _device = xfs_mount
    root_only = os.path.join(mnt, "root-only")
    os.makedirs(root_only, exist_ok=True)
    os.chmod(root_only, 0o755)
    with pytest.raises(probe.ProbeRefused, match="not writable by uid"):
        probe.run_as("nobody", root_only, 4 * MIB, MIB, 10, 0, 0.0)
    assert os.listdir(root_only) == []


def test_probe_refuses_to_fill_the_filesystem(xfs_mount):
    mnt, _device = xfs_mount
    directory = _nobody_dir(mnt, "full")
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with pytest.raises(probe.ProbeRefused, match="lower agent.probe.size_bytes"):
        probe.run_as("nobody", directory, free - MIB, MIB, 10, 16 * MIB, 0.0)
    with pytest.raises(probe.ProbeRefused, match="must leave"):
        probe.run(directory, 8 * MIB, MIB, 10, min_free_bytes=0, min_free_ratio=0.999)
    assert os.listdir(directory) == []


def test_probe_removes_stale_files_and_respects_time_budget(xfs_mount):
    mnt, _device = xfs_mount
    directory = _nobody_dir(mnt, "stale")
    stale = os.path.join(directory, probe.FILE_PREFIX + "12345")
    with open(stale, "wb") as f:
        f.write(b"x" * 4096)
    result = probe.run(directory, 256 * MIB, MIB, max_seconds=0.0001,
                       min_free_bytes=0, min_free_ratio=0.0)
    assert MIB <= result["probe"]["bytes"] < 256 * MIB   # stopped early, reported honestly
    assert os.listdir(directory) == []


def test_agent_record_carries_probe_and_the_mounts_xfs_counters(xfs_mount, tmp_path):
    mnt, device = xfs_mount
    directory = _nobody_dir(mnt, "agent")
    cfg = AgentConfig(state_dir=str(tmp_path / "state"), mounts=[mnt], kafka_enabled=False,
                      interval_s=1.0,
                      probe=ProbeConfig(enabled=True, directory=directory, size_bytes=32 * MIB,
                                        min_free_bytes=16 * MIB, min_free_ratio=0.0,
                                        every_s=3600.0))
    agent = Agent(cfg)
    agent.state.last_probe_ts = time.time()       # first tick: baseline, no probe yet
    assert agent.tick() is None
    agent.state.last_probe_ts = 0.0
    record = agent.tick()
    schema.validate(record)
    p = record["probe"]
    assert p["bytes"] == 32 * MIB
    (m,) = record["mounts"]
    assert (m["mount"], m["fs"], m["device"]) == (mnt, "xfs", device)
    assert m["counters"]["xfs_write_bytes"] == p["bytes"]
    assert m["counters"]["write_bytes"] >= p["bytes"]
    assert schema.key_metrics(record, "xfs")["probe_mib_s"] == p["mib_s"]
    assert agent.stats.probe == p
    from foliowatch.agent.exporter import metrics
    text = metrics(agent).decode()
    import re
    shown = re.search(r"^foliowatch_agent_probe_bytes (\S+)$", text, re.M).group(1)
    assert float(shown) == p["bytes"]
    assert 'foliowatch_agent_probe_vmstat_delta{counter="compact_stall"}' in text
    agent.close()
    assert labels.find_mount(labels.read_mounts(), directory).fs == "xfs"
