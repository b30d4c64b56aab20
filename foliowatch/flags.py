"""The command line's shared vocabulary: one spelling per concept in every subcommand
(``--output`` for an output folder, ``--metrics-addr HOST:PORT`` for a /metrics listen
address; Kafka's connection flags live with the Kafka settings in ``kafka_io``), and the
old spellings kept for one release as hidden aliases that say which flag replaces them.

Standard library only: the agent imports it on Python 3.9.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any, Callable, Optional, Tuple

from foliowatch.errors import ConfigError

_LISTEN = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]*):([0-9]{1,5})$")


class _DeprecatedAlias(argparse.Action):
    """An old spelling: stores into the new flag's destination (through ``convert``)
    and prints one line on stderr naming the new flag."""

    def __init__(self, option_strings, dest, new: str = "", convert=None, **kwargs):
        self.new = new
        self.convert = convert
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated and will be removed in the next "
              f"release; use {self.new}", file=sys.stderr)
        if self.convert is not None:
            try:
                values = self.convert(values)
            except (ValueError, ConfigError) as e:
                parser.error(f"{option_string}: {e}")
        setattr(namespace, self.dest, values)


def deprecated_alias(parser, old: str, new: str, dest: str,
                     convert: Optional[Callable[[str], Any]] = None, nargs=None) -> None:
    """Accept ``old`` (hidden from --help) as a spelling of ``new`` for one release."""
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, convert=convert,
                        nargs=nargs, help=argparse.SUPPRESS, default=argparse.SUPPRESS)


def parse_listen(text: str, flag: str = "--metrics-addr") -> Tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host means 127.0.0.1) -> (host, port)."""
    m = _LISTEN.match(text or "")
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(f"{flag}: expected host:port such as 127.0.0.1:9466, got {text!r}")
    host = m.group(1).strip("[]") or "127.0.0.1"
    return host, int(m.group(2))


def add_output(parser, help: str, old: Tuple[str, ...] = (), **kwargs) -> None:
    """``--output DIR`` (dest ``output``), with ``old`` spellings as deprecated aliases."""
    parser.add_argument("--output", "-o", metavar=kwargs.pop("metavar", "DIR"), help=help, **kwargs)
    for o in old:
        deprecated_alias(parser, o, "--output", "output")


def add_metrics_addr(parser, default: Optional[str], help: str, old_port: bool = False) -> None:
    """``--metrics-addr HOST:PORT`` (dest ``metrics_addr``); ``old_port`` keeps the former
    ``--metrics-port PORT`` (on 127.0.0.1) as a deprecated alias."""
    parser.add_argument("--metrics-addr", metavar="HOST:PORT", default=default, help=help)
    if old_port:
        deprecated_alias(parser, "--metrics-port", "--metrics-addr 127.0.0.1:PORT",
                         "metrics_addr", convert=_port_as_addr)


def _port_as_addr(text: str) -> str:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"expected a port number, got {text!r}")
    return f"127.0.0.1:{int(text)}"
