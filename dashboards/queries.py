"""The PromQL of the generated dashboards, outside Grafana: every panel's (and
annotation's) query, with Grafana's variables replaced so that Prometheus can run it.
Used to check the queries against a real Prometheus and to render the panels."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

from foliowatch.errors import ServiceError

from . import config


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool
    legend: str


def panel_queries(dashboard: dict) -> Iterator[PanelQuery]:
    """Every target of every panel (rows' nested panels too) and every Prometheus
    annotation query."""
    title = dashboard.get("title", "")
    panels = list(dashboard.get("panels") or [])
    for p in list(panels):
        panels.extend(p.get("panels") or [])
    for p in panels:
        for t in p.get("targets") or []:
            if "expr" in t:
                yield PanelQuery(title, p.get("title", ""), t.get("refId", ""), t["expr"],
                                 bool(t.get("instant")) and not t.get("range"),
                                 t.get("legendFormat", ""))
    for a in (dashboard.get("annotations") or {}).get("list", []):
        if a.get("expr"):
            yield PanelQuery(title, f"annotation: {a.get('name', '')}", "", a["expr"], False, "")


_VAR = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")


def concrete(expr: str, values: Optional[Dict[str, str]] = None,
             rate_interval: str = "1m", interval: str = "1m") -> str:
    """``expr`` with Grafana's variables replaced: a template variable by its value in
    ``values`` or by the "All" regex, ``$__rate_interval``/``$__interval`` by durations."""
    values = values or {}
    names = {name for name, _label in config.VARIABLES}

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name == "__rate_interval":
            return rate_interval
        if name in ("__interval", "__range"):
            return interval
        if name in names:
            return values.get(name, config.ALL_VALUE)
        raise ValueError(f"query uses ${name}, which is not a dashboard variable: {expr}")
    return _VAR.sub(sub, expr)


class Prometheus:
    """The two HTTP API calls the dashboards need."""

    def __init__(self, url: str, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: Dict[str, object]) -> dict:
        q = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{q}", timeout=self.timeout_s) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise ServiceError(f"Prometheus at {self.url}: {path} answered {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ServiceError(f"Prometheus at {self.url}: cannot reach it ({e}); check the URL") from None
        if body.get("status") != "success":
            raise ServiceError(f"Prometheus at {self.url}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def instant(self, expr: str, at: Optional[float] = None) -> List[dict]:
        params: Dict[str, object] = {"query": expr}
        if at is not None:
            params["time"] = at
        return self._get("/api/v1/query", params)["result"]

    def range(self, expr: str, start: float, end: float, step: float) -> List[dict]:
        return self._get("/api/v1/query_range",
                         {"query": expr, "start": start, "end": end, "step": step})["result"]

    def label_values(self, label: str, match: str) -> List[str]:
        return self._get(f"/api/v1/label/{label}/values", {"match[]": match})


def legend(fmt: str, labels: Dict[str, str]) -> str:
    """Grafana's ``{{label}}`` legend format."""
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
