"""The on-disk spool and the seq state: order, durability, torn tails, bounds."""

from __future__ import annotations

import json
import os
import struct
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from foliowatch.agent import spool
from foliowatch.agent.spool import HEADER, Spool, frame
from foliowatch.agent.state import AgentState, new_kernel_since

pytestmark = pytest.mark.agent39
MIB = 1 << 20


def payload(i: int, size: int = 100) -> bytes:
    head = json.dumps({"seq": i}).encode()
    return head + b" " * max(0, size - len(head))


def drain_all(sp: Spool):
    out = []
    while True:
        batch = sp.peek(7)
        if not batch:
            return out
        out += [json.loads(p)["seq"] for _, p in batch]
        sp.ack(batch[-1][0])


def test_records_come_back_in_order_and_survive_reopen(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(50):
        sp.append(payload(i))
    batch = sp.peek(20)
    sp.ack(batch[19][0])
    assert len(sp) == 30
    sp.close()
    sp2 = Spool(str(tmp_path), MIB)
    assert len(sp2) == 30
    assert drain_all(sp2) == list(range(20, 50))
    assert len(sp2) == 0


def test_unacknowledged_records_are_sent_again_after_a_crash(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(5):
        sp.append(payload(i))
    sp.peek(5)                      # read but never acknowledged, then the process dies
    sp2 = Spool(str(tmp_path), MIB)
    assert drain_all(sp2) == [0, 1, 2, 3, 4]


def test_torn_tail_is_detected_and_truncated(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(3):
        sp.append(payload(i))
    sp.close()
    (seg,) = [f for f in os.listdir(tmp_path) if f.endswith(".seg")]
    good_size = os.path.getsize(tmp_path / seg)
    with open(tmp_path / seg, "ab") as f:     # a crash halfway through the 4th append
        f.write(frame(payload(3))[:37])
    sp2 = Spool(str(tmp_path), MIB)
    assert sp2.torn_tail_bytes == 37
    assert os.path.getsize(tmp_path / seg) == good_size
    sp2.append(payload(4))                    # appends continue after the valid prefix
    assert drain_all(sp2) == [0, 1, 2, 4]


def test_checksum_mismatch_ends_the_valid_prefix(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(3):
        sp.append(payload(i))
    sp.close()
    (seg,) = [f for f in os.listdir(tmp_path) if f.endswith(".seg")]
    data = bytearray((tmp_path / seg).read_bytes())
    second = HEADER.size + 100
    data[second + HEADER.size + 3] ^= 0xFF    # flip a bit inside record 1's payload
    (tmp_path / seg).write_bytes(bytes(data))
    sp2 = Spool(str(tmp_path), MIB)
    assert drain_all(sp2) == [0]


def test_frame_is_length_and_crc32():
    f = frame(b"abc")
    assert f == struct.pack(">II", 3, zlib.crc32(b"abc")) + b"abc"


def test_full_spool_drops_the_oldest_and_counts_them(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    n = 3000                                  # ~3 MiB of 1 KiB records into 1 MiB
    dropped = 0
    for i in range(n):
        dropped += sp.append(payload(i, 1024))
        assert sp.bytes_used() <= MIB
    assert dropped == sp.dropped_total > 0
    remaining = drain_all(sp)
    assert len(remaining) + dropped == n
    assert remaining == list(range(dropped, n))    # the newest survive, contiguous, in order
    sp.close()
    assert Spool(str(tmp_path), MIB).dropped_total == dropped   # the count is persisted


def test_drop_while_partly_sent_counts_only_unsent(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(100):
        sp.append(payload(i, 1024))
    batch = sp.peek(10)
    sp.ack(batch[-1][0])
    for i in range(100, 3000):
        sp.append(payload(i, 1024))
    remaining = drain_all(sp)
    assert len(remaining) + sp.dropped_total == 3000 - 10
    assert remaining[-1] == 2999 and remaining == sorted(remaining)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("append"), st.integers(10, 3000)),
                          st.tuples(st.just("send"), st.integers(1, 30)),
                          st.tuples(st.just("reopen"), st.just(0))), max_size=60))
def test_spool_matches_a_queue_model(tmp_path_factory, ops):
    d = tmp_path_factory.mktemp("sp")
    sp = Spool(str(d), MIB)
    model, nxt = [], 0
    for op, arg in ops:
        if op == "append":
            sp.append(payload(nxt, arg))
            model.append(nxt)
            nxt += 1
        elif op == "send":
            batch = sp.peek(arg)
            assert [json.loads(p)["seq"] for _, p in batch] == model[:arg]
            if batch:
                sp.ack(batch[-1][0])
            model = model[len(batch):]
        else:
            sp.close()
            sp = Spool(str(d), MIB)
        assert len(sp) == len(model)
    assert drain_all(sp) == model


def test_state_survives_restart_and_is_replaced_atomically(tmp_path):
    s = AgentState(str(tmp_path))
    assert s.next_seq == 0
    s.next_seq = 41
    s.baseline = {"boot_id": "b", "clock": 1.0, "values": {"c\x1fx": 3}}
    s.save()
    assert not [f for f in os.listdir(tmp_path) if ".tmp." in f]
    s2 = AgentState(str(tmp_path))
    assert s2.next_seq == 41 and s2.baseline["values"] == {"c\x1fx": 3}


def test_state_file_without_the_kernel_fields_loads_as_a_first_install(tmp_path):
    """A state file written before the agent kept the kernel release: its seq floor,
    baseline and probe time load; no release is known (so no dense probing); the next
    save adds the fields."""
    (tmp_path / "state.json").write_text(json.dumps(
        {"next_seq": 41, "host_id": "h1", "last_probe_ts": 1700000000.5,
         "baseline_ts": 1700000010.0, "baseline": {"boot_id": "b", "values": {"c\x1fx": 3}}}))
    s = AgentState(str(tmp_path))
    assert (s.next_seq, s.host_id, s.last_probe_ts) == (41, "h1", 1700000000.5)
    assert s.baseline["values"] == {"c\x1fx": 3}
    assert (s.kernel_release, s.kernel_since) == (None, None)
    s.kernel_release, s.kernel_since = "6.18.3", 1700000100.0
    s.save()
    s2 = AgentState(str(tmp_path))
    assert (s2.kernel_release, s2.kernel_since, s2.next_seq) == ("6.18.3", 1700000100.0, 41)


BOOT = 1_700_000_000.0   # wall time this boot began


@pytest.mark.parametrize("stored_release,stored_since,release,expected", [
    # first install, or a state file from before the release was kept: not a rollout
    (None, None, "6.18.3", ("6.18.3", None)),
    (None, BOOT - 86400, "6.18.3", ("6.18.3", None)),
    # the release changed: since this boot
    ("6.6.58", None, "6.18.3", ("6.18.3", BOOT)),
    ("6.6.58", BOOT - 86400 * 30, "6.18.3", ("6.18.3", BOOT)),
    # a rollback to the release run before the last change is a change too
    ("6.18.3", BOOT - 3600, "6.6.58", ("6.6.58", BOOT)),
    # same release (agent restart, or a reboot into it): the stored since stays
    ("6.18.3", BOOT - 3600, "6.18.3", ("6.18.3", BOOT - 3600)),
    ("6.18.3", None, "6.18.3", ("6.18.3", None)),
])
def test_new_kernel_since_starts_only_when_the_release_changes(stored_release, stored_since,
                                                                release, expected):
    assert new_kernel_since(stored_release, stored_since, release, BOOT) == expected


def test_state_file_damaged_by_hand_is_refused_not_reset(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(RuntimeError, match="state.json: not valid JSON"):
        AgentState(str(tmp_path))


def test_lost_state_rename_is_repaired_from_the_spool(tmp_path):
    """A crash can lose the last state.json rename (the directory is not fsync'd per
    sample): the older state comes back. seq must resume after the newest spooled record
    and the older baseline must not be used (its interval would overlap sent ones)."""
    from foliowatch.agent.config import AgentConfig
    from foliowatch.agent.runner import Agent
    cfg = AgentConfig(state_dir=str(tmp_path / "st"), mounts=["/"], kafka_enabled=False)
    agent = Agent(cfg)
    agent.tick()
    agent.tick()                                     # seq 0
    old_state = (tmp_path / "st" / "state.json").read_bytes()
    agent.tick()                                     # seq 1
    agent.tick()                                     # seq 2
    agent.close()
    (tmp_path / "st" / "state.json").write_bytes(old_state)
    again = Agent(cfg)
    assert again.state.next_seq == 3
    assert again.tick() is None                      # fresh baseline, no overlapping interval
    assert again.tick()["seq"] == 3
    again.close()
    fresh = Agent(cfg)                               # a normal restart keeps its baseline
    assert fresh.tick()["seq"] == 4
    fresh.close()


def test_acknowledgements_update_the_head_in_place_and_a_restart_resumes_there(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(6):
        sp.append(payload(i))
    sp.ack(sp.peek(2)[-1][0])
    inode = os.stat(tmp_path / "head").st_ino
    sp.ack(sp.peek(2)[-1][0])
    assert os.stat(tmp_path / "head").st_ino == inode      # overwritten, not replaced
    assert len((tmp_path / "head").read_bytes()) == spool.HEAD_BYTES
    sp.close()
    assert drain_all(Spool(str(tmp_path), MIB)) == [4, 5]


def test_a_torn_head_means_resend_not_loss(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(5):
        sp.append(payload(i))
    sp.ack(sp.peek(2)[-1][0])
    sp.ack(sp.peek(1)[-1][0])
    sp.close()
    head = (tmp_path / "head").read_bytes()
    seg, off, dropped, crc = head.split()
    # half of a later update on top of this one: a larger offset, the old checksum
    (tmp_path / "head").write_bytes(head.replace(off, str(int(off) + 7).encode(), 1))
    assert drain_all(Spool(str(tmp_path), MIB)) == [0, 1, 2, 3, 4]


def test_a_head_written_before_the_checksum_is_still_read(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(5):
        sp.append(payload(i))
    sp.ack(sp.peek(3)[-1][0])
    sp.close()
    seg, off, dropped, _ = (tmp_path / "head").read_bytes().split()
    (tmp_path / "head").write_bytes(b"%s %s %s\n" % (seg, off, dropped))
    again = Spool(str(tmp_path), MIB)
    assert drain_all(again) == [3, 4]


def test_empty_head_after_a_crash_means_resend_not_loss(tmp_path):
    sp = Spool(str(tmp_path), MIB)
    for i in range(5):
        sp.append(payload(i))
    sp.ack(sp.peek(3)[-1][0])
    sp.close()
    (tmp_path / "head").write_bytes(b"")       # unsynced head lost by the filesystem
    assert drain_all(Spool(str(tmp_path), MIB)) == [0, 1, 2, 3, 4]


def _open_flags(path: str) -> int:
    """The status flags of this process's open file ``path`` (/proc/self/fdinfo)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    return next(int(line.split()[1], 8) for line in f
                                if line.startswith("flags:"))
        except OSError:
            continue
    raise AssertionError(f"{path} is not open")


def test_every_append_is_written_synchronously_also_after_a_roll(tmp_path):
    """A sample is accepted when it is on disk: the segment appended to is open for
    synchronous data writes (each write returns once its data and the file's size are
    on disk), the first tail and each one opened when the spool rolls over."""
    sp = Spool(str(tmp_path), MIB)   # segments of 64 KiB (one record of the largest size)
    sp.append(payload(0, 10_000))
    tail = str(tmp_path / f"{max(spool._segments(str(tmp_path))):020d}.seg")
    assert _open_flags(tail) & os.O_DSYNC == os.O_DSYNC
    for i in range(1, 10):   # rolls over
        sp.append(payload(i, 10_000))
    segments = spool._segments(str(tmp_path))
    assert len(segments) > 1
    assert _open_flags(str(tmp_path / f"{segments[-1]:020d}.seg")) & os.O_DSYNC == os.O_DSYNC
    sp.close()
