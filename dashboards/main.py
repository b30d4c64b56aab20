"""``foliowatch dashboards``: generate the Grafana dashboards' JSON, push them (and the
detector's regressions as annotations) to a Grafana, or render the main dashboard's
panels as a PNG from a Prometheus.

    foliowatch dashboards generate [--output DIR] [--check]
    FOLIOWATCH_GRAFANA_TOKEN=... foliowatch dashboards push --url https://grafana.example/ \\
        [--folder foliowatch] [--state detector-state.json | --annotations ann.json]
    foliowatch dashboards render --prometheus http://127.0.0.1:9090 --out docs/x.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from foliowatch.errors import ConfigError
from foliowatch.flags import add_output

from . import config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="write the dashboards' JSON (default: the packaged generated/)")
    add_output(g, default=None, old=("--out",),
               help="directory to write to (default: dashboards/generated)")
    g.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the files in --output differ from the code")

    # no abbreviations: `--token SECRET` must be refused, not taken for --token-file
    # (and the secret then printed in the "cannot read" error)
    p = sub.add_parser("push", allow_abbrev=False,
                       help="create or update the dashboards in a Grafana folder and "
                            "post regression annotations")
    p.add_argument("--url", required=True, help="Grafana's root URL, e.g. https://grafana.example.com/")
    p.add_argument("--token-file", default=None,
                   help="file holding the API token (default: $FOLIOWATCH_GRAFANA_TOKEN)")
    p.add_argument("--folder", default=config.FOLDER_UID, help=f"folder uid (default {config.FOLDER_UID})")
    p.add_argument("--folder-title", default=config.FOLDER_TITLE, help="title if the folder is created")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dashboards whatever their version in Grafana")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--state", default=None,
                     help="detector state file: one annotation per regression (detection to resolution)")
    src.add_argument("--annotations", default=None,
                     help="annotations file of `foliowatch detect --annotations` (one per transition)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP request (default 10)")

    r = sub.add_parser("render", help="PNG of the main panels from a Prometheus (what an operator sees)")
    r.add_argument("--prometheus", required=True, help="Prometheus URL, e.g. http://127.0.0.1:9090")
    r.add_argument("--out", required=True, help="PNG path")
    r.add_argument("--start", type=float, default=None, help="range start, Unix s (default: end - 1h)")
    r.add_argument("--end", type=float, default=None, help="range end, Unix s (default: now)")
    r.add_argument("--step", type=float, default=None, help="query step in s (default: range / 200)")


def run(args: argparse.Namespace) -> int:
    if args.action == "generate":
        return _generate(args)
    if args.action == "push":
        return _push(args)
    return _render(args)


def _generate(args) -> int:
    from . import generate
    out = Path(args.output) if args.output else generate.GENERATED_DIR
    if args.check:
        stale = generate.stale(out)
        for name in stale:
            print(f"{out / name}: differs from the code; run `foliowatch dashboards generate`",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in generate.write(out):
        print(path)
    return 0


def _push(args) -> int:
    from . import generate, push
    token = push.read_token(args.token_file)
    annotations = None
    if args.state:
        annotations = push.annotations_from_state(args.state)
    elif args.annotations:
        annotations = push.annotations_from_file(args.annotations)
    if args.timeout <= 0:
        raise ConfigError(f"--timeout: expected seconds > 0, got {args.timeout}")
    res = push.push(args.url, token, generate.dashboards(), folder_uid=args.folder,
                    folder_title=args.folder_title, overwrite=args.overwrite,
                    annotations=annotations, timeout_s=args.timeout)
    print(f"folder {res.folder_uid}: {'created' if res.folder_created else 'exists'}")
    for uid, url in res.dashboards.items():
        print(f"dashboard {uid}: saved {url}")
    if annotations is not None:
        print(f"annotations: {res.annotations_posted} posted, {res.annotations_present} already there")
    return 0


def _render(args) -> int:
    from . import render
    path = render.render(args.prometheus, args.out, start=args.start, end=args.end, step=args.step)
    print(path)
    return 0
