"""The ``foliowatch`` command: one CLI, one subcommand per component.

Each subcommand lives with its component as a module exposing ``add_arguments(parser)``
and ``run(args) -> int``; this file only wires them, importing a component when its
subcommand runs so that the agent never pays for the pipeline's imports. It is also the
one place that turns the project's errors (``foliowatch.errors``) into an exit code (2)
and one line on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# subcommand -> (module, help, needs python 3.11+)
SUBCOMMANDS = {
    "agent": ("foliowatch.agent.main", "collect kernel telemetry on this host, send to Kafka, serve /metrics", False),
    "simulate": ("foliowatch.simulator.main", "generate a simulated fleet's telemetry with ground truth", True),
    "pipeline": ("foliowatch.pipeline.main", "consume samples, validate, aggregate into a Parquet dataset", True),
    "detect": ("foliowatch.detector.main", "find kernel-rollout regressions in the Parquet dataset", True),
    "verdict": ("foliowatch.detector.verdict", "rollout gate: exit 0 proceed, 1 regression, 2 not enough evidence", True),
    "dashboards": ("foliowatch.dashboards.main", "generate and validate the Grafana dashboards", True),
    "report": ("foliowatch.shell.report", "HTML/PNG/text report of regressions from a dataset", True),
    "demo": ("foliowatch.shell.demo", "the whole system on this machine: Kafka, agent, simulated fleet, detection", True),
}


def _load(name: str):
    module, _help, needs_311 = SUBCOMMANDS[name]
    if needs_311 and sys.version_info < (3, 11):
        raise SystemExit(f"foliowatch {name}: needs Python 3.11+, this is "
                         f"{sys.version.split()[0]}; only 'foliowatch agent' runs on 3.9+")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            return None
        raise SystemExit(f"foliowatch {name}: missing dependency '{e.name}': install "
                         f"foliowatch[{_extra_for(name)}]") from None


def _extra_for(name: str) -> str:
    return {"agent": "agent", "pipeline": "pipeline", "simulate": "pipeline",
            "detect": "detector", "verdict": "detector", "dashboards": "dashboards"}.get(name, "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foliowatch", description=__doc__.splitlines()[0])
    from foliowatch import __version__
    parser.add_argument("--version", action="version", version=f"foliowatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_, _needs) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def subcommand_parser(name: str, mod) -> argparse.ArgumentParser:
    sp = argparse.ArgumentParser(prog=f"foliowatch {name}", description=SUBCOMMANDS[name][1])
    mod.add_arguments(sp)
    return sp


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv or ["--help"])
        return 2
    name = argv[0]
    mod = _load(name)
    if mod is None or not hasattr(mod, "run"):
        print(f"foliowatch {name}: not yet built", file=sys.stderr)
        return 3
    args = subcommand_parser(name, mod).parse_args(argv[1:])
    from foliowatch.errors import FoliowatchError
    try:
        return int(mod.run(args) or 0)
    except FoliowatchError as e:
        print(f"foliowatch {name}: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        # a wrong path given by the user: say which and stop, without a traceback
        print(f"foliowatch {name}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
