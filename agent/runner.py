"""The agent's loop: sample -> record -> spool (write-ahead) -> Kafka, on a fixed cadence.

Two threads, one queue between them. The sampling thread reads the kernel, encodes and
appends to the spool on a fixed cadence; it never waits for Kafka, so an unreachable
broker (whose client may block for ``send_timeout_s`` per attempt) cannot make it skip
samples. The delivery thread sends the spool's records in order and acknowledges them;
it retries as soon as the sender's back-off allows, so a returning broker receives the
backlog without waiting a whole interval. The /metrics server has its own thread and
only reads.

Within ``agent.kafka.latency_budget_s`` samples wait in the spool and leave together:
the delivery thread sleeps until the oldest unsent sample has waited the budget less
half an interval (so the sample due just then rides along), and sends them in one
request. A request costs the agent ~2 ms of CPU (kafka-python's network thread most of
it) whatever it carries; one per sample was the largest cost of an interval. At a clean
stop the spool is sent once more (bounded by ``send_timeout_s``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from foliowatch import schema
from foliowatch.agent.collectors import labels
from foliowatch.agent.collectors import probe as write_probe
from foliowatch.agent.config import AgentConfig
from foliowatch.agent.deltas import Baseline
from foliowatch.agent.producer import KafkaSender
from foliowatch.agent.sampler import Sampler
from foliowatch.agent.spool import Spool
from foliowatch.agent.state import SPOOL_DIR, AgentState, new_kernel_since, resume
from foliowatch.agent.stop import StopFlag

log = logging.getLogger("foliowatch.agent")
DRAIN_BATCH = 200


@dataclass
class AgentStats:
    samples: int = 0
    spooled: int = 0
    collection_errors: int = 0
    last_duration_s: float = 0.0
    last_sample_ts: float = 0.0
    probe: Optional[Dict[str, Any]] = None
    probe_vmstat: Dict[str, int] = field(default_factory=dict)
    probe_refusals: int = 0


class Agent:
    def __init__(self, cfg: AgentConfig, *, proc: str = "/proc", sys: str = "/sys",
                 etc: str = "/etc", deliver: bool = True):
        self.cfg = cfg
        self.sampler = Sampler(cfg, proc=proc, sys=sys, etc=etc)
        self._lock_fd = _lock_state_dir(cfg.state_dir)
        self.state = AgentState(cfg.state_dir)
        self.spool = Spool(os.path.join(cfg.state_dir, SPOOL_DIR), cfg.spool_max_bytes)
        if self.spool.torn_tail_bytes:
            log.warning("spool: truncated %d bytes of a torn record (crash during a write)%s",
                        self.spool.torn_tail_bytes,
                        f"; {self.spool.corrupt_total} damaged segment(s) cut short"
                        if self.spool.corrupt_total else "")
        # seq resumes after the spool's newest record; the stored baseline only if it is
        # that record's reading or later (after a crash the state file is older)
        self.baseline = Baseline()
        if resume(self.state, self.spool.last_payload()):
            self.baseline = Baseline.from_json(self.state.baseline)
        elif self.state.baseline:
            log.info("state file older than the spool (the agent was not stopped cleanly): "
                     "seq resumes at %d, with a new baseline", self.state.next_seq)
        self.state.host_id = self.sampler.host_id
        # the release cannot change while the agent runs: deciding at start is enough
        was = self.state.kernel_release
        self.state.kernel_release, self.state.kernel_since = new_kernel_since(
            was, self.state.kernel_since, *labels.running_kernel(proc))
        if (was is not None and was != self.state.kernel_release and cfg.probe.enabled
                and cfg.probe.new_kernel_hours > 0):
            log.info("kernel %s (was %s): a write probe every %gs for %gh",
                     self.state.kernel_release, was, cfg.probe.new_kernel_every_s,
                     cfg.probe.new_kernel_hours)
        self.save_state()   # a floor for seq should the spool folder ever be emptied
        self.sender: Optional[KafkaSender] = None
        if deliver and cfg.kafka_enabled:
            self.sender = KafkaSender(cfg.kafka, cfg.topic, self.sampler.host_id.encode(),
                                      cfg.send_timeout_s, cfg.retry_backoff_max_s)
        self.stats = AgentStats()
        self._lock = threading.Lock()         # one sampling pass at a time
        self._drain_lock = threading.Lock()   # one delivery pass at a time
        self._wake = threading.Event()        # delivery may be due (or: stop)
        # monotonic time the oldest unsent sample was spooled (None: none unsent); a
        # backlog found at start is due at once
        self._pending_lock = threading.Lock()
        self._unsent_since: Optional[float] = (
            time.monotonic() - cfg.latency_budget_s if len(self.spool) else None)

    def save_state(self) -> None:
        """Write the state file (baseline, probe time, kernel release, seq floor): at
        start, after a probe, at a clean stop."""
        self.state.baseline = self.baseline.to_json()
        self.state.save()

    # -- health accessors for /metrics ----------------------------------------------
    def sender_sent(self) -> int:
        return self.sender.sent_total if self.sender else 0

    def sender_requests(self) -> int:
        return self.sender.requests_total if self.sender else 0

    def sender_errors(self) -> int:
        return self.sender.errors_total if self.sender else 0

    def last_send_error(self) -> Tuple[Optional[float], Optional[str]]:
        if self.sender is None:
            return None, None
        return self.sender.last_error_ts, self.sender.last_error

    def spool_len(self) -> int:
        return len(self.spool)

    def spool_bytes(self) -> int:
        return self.spool.bytes_used()

    def spool_dropped(self) -> int:
        return self.spool.dropped_total

    # -- the write probe ---------------------------------------------------------------
    def probe_period_s(self, now: float) -> float:
        """Seconds between probes at wall time ``now``: during the host's first
        ``new_kernel_hours`` on a kernel release it had not run before (the canary wave,
        when the detector needs the probe most) the shorter of ``new_kernel_every_s`` and
        ``every_s`` (a host configured to probe more often than that keeps its period),
        else ``every_s``."""
        p = self.cfg.probe
        since = self.state.kernel_since
        if (since is not None and p.new_kernel_hours > 0
                and now - since < p.new_kernel_hours * 3600.0):
            return min(p.new_kernel_every_s, p.every_s)
        return p.every_s

    def probe_due(self) -> bool:
        """Enabled, not run for ``probe_period_s``, and a baseline exists (a probe in a
        baseline-only tick would have no record to ride in)."""
        p = self.cfg.probe
        now = time.time()
        return (p.enabled and bool(self.baseline.values)
                and now - self.state.last_probe_ts >= self.probe_period_s(now))

    def run_probe(self) -> Optional[Dict[str, Any]]:
        p = self.cfg.probe
        self.state.last_probe_ts = time.time()  # a failing probe also waits its period
        try:
            result = write_probe.run_as(p.user, p.directory, p.size_bytes, p.chunk_bytes,
                                        p.max_seconds, p.min_free_bytes, p.min_free_ratio)
        except (write_probe.ProbeRefused, OSError) as e:
            self.stats.probe_refusals += 1
            log.warning("write probe did not run: %s", e)
            return None
        try:
            self.save_state()   # a restart must not probe again before its period
        except OSError as e:
            log.warning("state file not written after the probe: %s", e)
        self.stats.probe = result["probe"]
        self.stats.probe_vmstat = result["vmstat"]
        log.info("write probe: %d bytes in %.3fs = %.1f MiB/s, compaction/reclaim during it: %s",
                 result["probe"]["bytes"], result["probe"]["seconds"],
                 result["probe"]["mib_s"], result["vmstat"])
        return result["probe"]

    # -- one tick ----------------------------------------------------------------------
    def tick(self, deliver: bool = True) -> Optional[Dict[str, Any]]:
        """Collect one sample, spool it, and (``deliver``) try to send the spool in this
        thread. Returns the record, or ``None`` when this reading only set a baseline."""
        with self._lock:
            start = time.monotonic()
            probe = self.run_probe() if self.probe_due() else None
            reading = self.sampler.read()
            seq = self.state.next_seq
            record = self.sampler.record(reading, self.baseline, seq)
            if record is not None:
                if probe is not None:
                    record["probe"] = probe
                try:
                    dropped = self.spool.append(schema.encode(record))
                except OSError as e:
                    # Not accepted (e.g. the disk is full): its seq goes to the next
                    # sample, whose interval then covers this one too.
                    self.baseline.undo()
                    log.warning("spool: sample seq %d not taken, it cannot be written (%s); "
                                "the next sample covers its interval", seq, e)
                    raise
                self.state.next_seq = seq + 1   # accepted: it is on disk
                with self._pending_lock:
                    if self._unsent_since is None:   # the budget's clock starts
                        self._unsent_since = time.monotonic()
                        self._wake.set()
                self.stats.samples += 1
                self.stats.spooled += 1
                self.stats.last_sample_ts = record["ts"]
                if dropped:
                    log.warning("spool full (%d bytes): dropped the %d oldest samples; %d "
                                "dropped in total", self.cfg.spool_max_bytes, dropped,
                                self.spool.dropped_total)
            self.state.baseline_ts = round(reading.ts, 3)  # the baseline's reading, as ts
            self.stats.last_duration_s = time.monotonic() - start
        if deliver:
            self.drain()
        return record

    def drain(self, deadline: Optional[float] = None) -> int:
        """Send spooled records in order until the spool is empty, a send fails or the
        monotonic ``deadline`` passes."""
        if self.sender is None or not self.sender.ready():
            return 0
        with self._drain_lock:
            return self._drain(deadline)

    def _drain(self, deadline: Optional[float]) -> int:
        assert self.sender is not None
        sent = 0
        while deadline is None or time.monotonic() < deadline:
            batch = self.spool.peek(DRAIN_BATCH)
            if not batch:
                break
            n = self.sender.send([payload for _, payload in batch])
            if n:
                self.spool.ack(batch[n - 1][0])
                sent += n
            if n < len(batch):
                break
        with self._pending_lock:
            if not len(self.spool):
                self._unsent_since = None
        return sent

    def delivery_wait(self) -> Optional[float]:
        """Seconds until the delivery thread should send (0: now), ``None`` when nothing
        waits: the latency budget of the oldest unsent sample, or the sender's back-off
        after a failure, whichever ends later."""
        if self.sender is None:
            return None
        with self._pending_lock:
            since = self._unsent_since
        if since is None:
            return None
        wait_s = max(0.0, self.cfg.latency_budget_s - self.cfg.interval_s / 2)
        return max(0.0, since + wait_s - time.monotonic(), self.sender.retry_in())

    def _deliver_loop(self, stop: StopFlag) -> None:
        # Asleep until a send is due: woken by ``tick`` when a sample arrives in an empty
        # spool (the budget's clock starts) and by ``run`` at stop, else by its timeout.
        while not stop.is_set():
            wait_s = self.delivery_wait()
            if wait_s is None or wait_s > 0:
                self._wake.wait(wait_s)
                self._wake.clear()
                continue
            try:
                self.drain()
            except Exception as e:  # noqa: BLE001 - keep delivering; records stay spooled
                log.exception("delivery failed: %s", e)
                self._wake.wait(1.0)   # a client bug must not become a busy loop

    def run(self, stop: StopFlag) -> None:
        """Sample every interval until ``stop`` is set (the sampling thread sleeps on it
        between ticks: one C call, ``agent.stop``)."""
        deliverer = None
        if self.sender is not None:
            deliverer = threading.Thread(target=self._deliver_loop, args=(stop,),
                                         name="foliowatch-deliver", daemon=True)
            deliverer.start()
        interval = self.cfg.interval_s
        next_tick = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    self.tick(deliver=False)
                except Exception as e:  # noqa: BLE001 - one bad pass must not stop the agent
                    self.stats.collection_errors += 1
                    log.exception("sampling failed: %s", e)
                next_tick += interval
                now = time.monotonic()
                if next_tick < now:  # overran (slow disk, long probe): keep the cadence
                    next_tick = now + interval - ((now - next_tick) % interval)
                stop.wait(max(0.0, next_tick - time.monotonic()))
        finally:
            stop.set()
            self._wake.set()
            if deliverer is not None:
                deliverer.join(self.cfg.send_timeout_s * 2 + 5)
                try:   # what waited within its budget leaves now, not at the next start
                    self.drain(deadline=time.monotonic() + self.cfg.send_timeout_s)
                except Exception as e:  # noqa: BLE001 - it stays in the spool
                    log.warning("final delivery at stop failed: %s", e)

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close(timeout=self.cfg.send_timeout_s)
        try:
            self.save_state()   # the baseline: the first interval after a restart spans it
        except OSError as e:
            log.warning("state file not written at stop (%s): the next start takes a new "
                        "baseline", e)
        self.spool.close()
        self.sampler.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the flock
            self._lock_fd = None


def _lock_state_dir(state_dir: str) -> int:
    """One agent per state directory: two would interleave one spool and reuse seq
    (e.g. ``--once`` run by hand while the service runs)."""
    import fcntl
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, "lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RuntimeError(f"{path}: held by another agent (pid {holder}); stop it or give "
                           "this one its own agent.state_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd
