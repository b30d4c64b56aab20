"""The Prometheus text exposition format (0.0.4), as prometheus-client writes it, and
the small HTTP server that serves it on /metrics; standard library only.

Why not prometheus-client itself: importing it loads its exposition module, which
imports ``http.server``, ``wsgiref``, ``urllib.request``, ``email`` and ``ssl`` (for its
push gateway and TLS server), ~4 MiB of the agent's resident memory on every host for
the few families below. The bytes served are the same: ``tests/test_agent_metrics.py``
compares them with prometheus-client's ``generate_latest`` over the same families.

Families are built like prometheus-client's (``CounterFamily(name, help, labels)``,
``add_metric(label_values, value)``); ``render`` writes them: ``# HELP`` and ``# TYPE``
lines, then one line per sample with its labels sorted by name. Counters are exposed as
``<name>_total``, info families as gauges named ``<name>_info`` of value 1.

The server answers every GET with the metrics (gzip when the scraper accepts it, as
Prometheus does), one request at a time, in one thread that sleeps in ``accept`` between
scrapes.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_REQUEST_BYTES = 16384
_CLIENT_TIMEOUT_S = 10.0


class Family:
    """One metric family: name, type, help text, label names, samples."""

    kind = "untyped"
    suffix = ""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()):
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.samples: List[Tuple[Dict[str, str], float]] = []

    def add_metric(self, label_values: Sequence[str], value: float) -> None:
        self.samples.append((dict(zip(self.labels, label_values)), value))


class CounterFamily(Family):
    kind = "counter"
    suffix = "_total"

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()):
        # as prometheus-client: the family is named without the sample's "_total"
        super().__init__(name[:-6] if name.endswith("_total") else name, documentation,
                         labels)


class GaugeFamily(Family):
    kind = "gauge"


class InfoFamily(Family):
    kind = "info"
    suffix = "_info"

    def add_metric(self, label_values: Sequence[str], value: Dict[str, str]) -> None:  # type: ignore[override]
        self.samples.append(({**dict(zip(self.labels, label_values)), **value}, 1.0))


def float_text(d: float) -> str:
    """A sample value as Go prints it (prometheus-client's ``floatToGoString``,
    Apache-2.0): ``+Inf``, ``-Inf``, ``NaN``, else Python's repr, with an exponent from
    1e+07 up like Go."""
    d = float(d)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _label_value(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(families: Iterable[Family]) -> bytes:
    """The text exposition of ``families``, byte for byte as prometheus-client's
    ``generate_latest`` writes the same families."""
    out: List[str] = []
    for f in families:
        name = f.name + f.suffix
        kind = "gauge" if f.kind == "info" else f.kind
        doc = f.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n")
        out.append(f"# TYPE {name} {kind}\n")
        for labels, value in f.samples:
            if labels:
                text = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items()))
                out.append(f"{name}{{{text}}} {float_text(value)}\n")
            else:
                out.append(f"{name} {float_text(value)}\n")
    return "".join(out).encode("utf-8")


# -- the process's own figures, as prometheus-client's ProcessCollector ------------------
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_btime: Optional[float] = None


def _boot_time() -> float:
    global _btime
    if _btime is None:
        with open("/proc/stat", "rb") as f:
            _btime = next(float(line.split()[1]) for line in f if line.startswith(b"btime "))
    return _btime


def process_families() -> List[Family]:
    """process_virtual_memory_bytes, _resident_memory_bytes, _start_time_seconds,
    _cpu_seconds_total, _open_fds, _max_fds (names, help and order of
    prometheus-client's ProcessCollector)."""
    out: List[Family] = []
    try:
        with open("/proc/self/stat", "rb") as f:
            parts = f.read().split(b")")[-1].split()
        for family, value in (
                (GaugeFamily("process_virtual_memory_bytes", "Virtual memory size in bytes."),
                 float(parts[20])),
                (GaugeFamily("process_resident_memory_bytes", "Resident memory size in bytes."),
                 float(parts[21]) * _PAGE),
                (GaugeFamily("process_start_time_seconds",
                             "Start time of the process since unix epoch in seconds."),
                 float(parts[19]) / _TICKS + _boot_time()),
                (CounterFamily("process_cpu_seconds_total",
                               "Total user and system CPU time spent in seconds."),
                 float(parts[11]) / _TICKS + float(parts[12]) / _TICKS)):
            family.add_metric([], value)
            out.append(family)
    except OSError:
        pass
    try:
        with open("/proc/self/limits", "rb") as f:
            max_fds = next(float(line.split()[3]) for line in f
                           if line.startswith(b"Max open file"))
        open_fds = GaugeFamily("process_open_fds", "Number of open file descriptors.")
        open_fds.add_metric([], len(os.listdir("/proc/self/fd")))
        limit = GaugeFamily("process_max_fds", "Maximum number of open file descriptors.")
        limit.add_metric([], max_fds)
        out += [open_fds, limit]
    except (OSError, StopIteration):
        pass
    return out


# -- the server -----------------------------------------------------------------------
class MetricsServer:
    """/metrics over HTTP/1.0-style exchanges (one request per connection), served by
    one thread; ``shutdown()`` stops it."""

    def __init__(self, address: Tuple[str, int], body: Callable[[], bytes],
                 thread_name: str = "foliowatch-metrics"):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(address)
            self._sock.listen(16)
        except OSError:
            self._sock.close()
            raise
        self.server_address = self._sock.getsockname()
        self._body = body
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=thread_name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping:
            try:
                conn, _addr = self._sock.accept()   # asleep until a scrape (or shutdown)
            except OSError:
                if self._stopping:
                    return
                continue
            try:
                conn.settimeout(_CLIENT_TIMEOUT_S)
                self._answer(conn)
            except Exception:  # noqa: BLE001 - one bad client must not stop /metrics
                pass
            finally:
                conn.close()

    def _answer(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request and len(request) < _MAX_REQUEST_BYTES:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        parts = head[0].split()
        if len(parts) < 2:
            self._send(conn, "400 Bad Request", b"bad request\n", "text/plain")
            return
        method, path = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            self._send(conn, "405 Method Not Allowed", b"only GET\n", "text/plain")
            return
        if path.split("?", 1)[0] == "/favicon.ico":
            self._send(conn, "200 OK", b"", "text/plain")
            return
        headers = {}
        for line in head[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        body = self._body()
        extra = ""
        if "gzip" in headers.get("accept-encoding", ""):
            import gzip
            body = gzip.compress(body)
            extra = "Content-Encoding: gzip\r\n"
        self._send(conn, "200 OK", b"" if method == "HEAD" else body, CONTENT_TYPE, extra,
                   length=len(body))

    @staticmethod
    def _send(conn: socket.socket, status: str, body: bytes, content_type: str,
              extra: str = "", length: Optional[int] = None) -> None:
        head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\n{extra}"
                "Connection: close\r\n\r\n").encode("latin-1")
        conn.sendall(head + body)

    def shutdown(self) -> None:
        self._stopping = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)   # wakes the thread blocked in accept
        except OSError:
            pass
        self._thread.join(5)
        self._sock.close()
