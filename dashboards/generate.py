"""The dashboards as Grafana JSON: one builder per dashboard, encoded by
grafana-foundation-sdk, written under ``generated/`` (packaged with foliowatch and
committed, so Grafana's file provisioning can read them without Python)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from . import health, rollout, write_health

GENERATED_DIR = Path(__file__).resolve().parent / "generated"

# file name -> builder; the kernel rollout dashboard first: it is the one operators open
DASHBOARDS: Dict[str, Callable] = {
    "kernel-rollout.json": rollout.build,
    "write-health.json": write_health.build,
    "health.json": health.build,
}


def to_json_text(model) -> str:
    """The one encoding used for committed files and for push: stable key order."""
    return json.dumps(model, cls=JSONEncoder, indent=2) + "\n"


def dashboards() -> Dict[str, dict]:
    """file name -> dashboard JSON (a dict, as Grafana's API takes it)."""
    return {name: json.loads(to_json_text(build().build())) for name, build in DASHBOARDS.items()}


def texts() -> Dict[str, str]:
    return {name: to_json_text(build().build()) for name, build in DASHBOARDS.items()}


def write(outdir: Path = GENERATED_DIR) -> List[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in texts().items():
        path = outdir / name
        path.write_text(text)
        out.append(path)
    return out


def stale(outdir: Path = GENERATED_DIR) -> List[str]:
    """Names of committed files that differ from what the code generates."""
    return [name for name, text in texts().items()
            if not (outdir / name).is_file() or (outdir / name).read_text() != text]
