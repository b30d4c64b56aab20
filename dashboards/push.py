"""``foliowatch dashboards push``: the generated dashboards into a Grafana folder, and the
detector's regressions as Grafana annotations, through grafana-client (``GrafanaApi``).

Each failure a user can fix is raised as one line naming what to fix: a wrong URL, a
token Grafana refuses (401), a token without the permission (403), a dashboard changed
in Grafana while it was pushed (412 version-mismatch). The token comes from the
environment or a file, never from the command line (where ``ps`` and shell history
would keep it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlparse

from foliowatch.errors import ConfigError, InputError, ServiceError

from . import config

TOKEN_ENV = "FOLIOWATCH_GRAFANA_TOKEN"
PUSH_MESSAGE = "foliowatch dashboards push (generated; edit dashboards/ in the repository)"


_NETWORK_REASONS = (("refused", "connection refused"), ("Name or service not known", "host name not found"),
                    ("nodename nor servname", "host name not found"),
                    ("getaddrinfo", "host name not found"), ("timed out", "timed out"),
                    ("CERTIFICATE", "TLS certificate not trusted"), ("SSL", "TLS handshake failed"))


def _network_reason(e: Exception) -> str:
    text = str(e)
    for needle, reason in _NETWORK_REASONS:
        if needle in text:
            return reason
    return f"{type(e).__name__}: {text.splitlines()[0][:120] if text else ''}"


def read_token(token_file: Optional[str], env: Optional[Dict[str, str]] = None) -> str:
    """The API token: ``--token-file`` when given, else $FOLIOWATCH_GRAFANA_TOKEN."""
    env = os.environ if env is None else env
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({e.strerror}); "
                              "give a file holding a Grafana service account token") from None
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty; put a Grafana "
                              "service account token in it")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no Grafana token: set {TOKEN_ENV} or pass --token-file PATH "
                          "(a service account token with the Editor role)")
    return token


def check_url(url: str) -> str:
    """``http(s)://host[:port][/sub/path]``, normalised to end in ``/`` when it has a
    path (grafana-client appends ``api`` to the path as given)."""
    u = urlparse(url or "")
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(f"--url: expected http(s)://host[:port][/path] of Grafana, got {url!r}")
    if u.path and not u.path.endswith("/"):
        url = url.rstrip("/") + "/" if not (u.query or u.fragment) else url
    return url


@dataclass
class PushResult:
    folder_uid: str
    folder_created: bool = False
    dashboards: Dict[str, str] = field(default_factory=dict)      # uid -> url
    annotations_posted: int = 0
    annotations_present: int = 0


class GrafanaPusher:
    """One Grafana, one token. Methods raise ConfigError/ServiceError with one line."""

    def __init__(self, url: str, token: str, timeout_s: float = 10.0):
        from grafana_client import GrafanaApi
        self.url = check_url(url)
        self.api = GrafanaApi.from_url(self.url, credential=token, timeout=timeout_s)

    # -- errors -------------------------------------------------------------------------
    def _fail(self, e: Exception, action: str) -> Exception:
        """The one-line error for a failed call of ``action``."""
        from grafana_client.client import GrafanaException
        where = f"Grafana at {self.url}"
        if not isinstance(e, GrafanaException):
            # niquests' connection, DNS and TLS errors: the URL is wrong or Grafana is down
            return ServiceError(f"{where}: cannot {action}: {_network_reason(e)}; "
                                "check --url and that Grafana is running")
        status = e.status_code
        resp = e.response if isinstance(e.response, dict) else {}
        msg = resp.get("message") or (e.response if isinstance(e.response, str) else "")
        msg = str(msg).strip().splitlines()[0][:200] if msg else ""
        if status == 0:
            return ServiceError(f"{where}: cannot {action}: {e.message}; "
                                "check --url and that Grafana is running")
        if status == 401:
            return ConfigError(f"{where} refused the token (401 Unauthorized) to {action}: "
                               f"check {TOKEN_ENV} or --token-file (expired or revoked token, "
                               "or a token of another Grafana)")
        if status == 403:
            return ConfigError(f"{where}: the token may not {action} (403 Forbidden{': ' + msg if msg else ''}); "
                               f"give its service account the Editor role, or Edit on folder "
                               f"'{config.FOLDER_UID}'")
        if status == 412 or resp.get("status") in ("version-mismatch", "name-exists", "plugin-dashboard"):
            kind = resp.get("status") or "precondition failed"
            return ServiceError(f"{where}: cannot {action}: {status} {kind}"
                                f"{' (' + msg + ')' if msg else ''}: the dashboard was changed in "
                                "Grafana meanwhile; push again, or pass --overwrite to replace it")
        if status == 404:
            return ServiceError(f"{where}: cannot {action}: 404 Not Found{' (' + msg + ')' if msg else ''}; "
                                "check --url (Grafana's root URL, with its sub-path if it has one)")
        return ServiceError(f"{where}: cannot {action}: {status} {msg or e.message}")

    def _call(self, action: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - mapped to the project's error types
            if isinstance(e, (ConfigError, ServiceError)):
                raise
            raise self._fail(e, action) from None

    # -- folder, dashboards, annotations ------------------------------------------------
    def ensure_folder(self, uid: str, title: str) -> bool:
        """Create the folder unless it exists; returns True when created."""
        from grafana_client.client import GrafanaClientError
        try:
            self.api.folder.get_folder(uid)
            return False
        except GrafanaClientError as e:
            if e.status_code != 404:
                raise self._fail(e, f"read folder '{uid}'") from None
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, f"read folder '{uid}'") from None
        self._call(f"create folder '{uid}'", self.api.folder.create_folder, title, uid=uid)
        return True

    def push_dashboard(self, dashboard: dict, folder_uid: str, overwrite: bool) -> str:
        body = {"dashboard": {k: v for k, v in dashboard.items() if k not in ("id", "version")},
                "folderUid": folder_uid, "overwrite": overwrite, "message": PUSH_MESSAGE}
        if not overwrite:
            # optimistic lock: the version read now; a change in Grafana between this read
            # and the save answers 412 version-mismatch instead of being lost silently
            version = self._existing_version(dashboard["uid"])
            if version is not None:
                body["dashboard"]["version"] = version
        out = self._call(f"save dashboard '{dashboard['uid']}'",
                         self.api.dashboard.update_dashboard, body)
        return (out or {}).get("url", "")

    def _existing_version(self, uid: str) -> Optional[int]:
        from grafana_client.client import GrafanaClientError
        try:
            got = self.api.dashboard.get_dashboard(uid)
        except GrafanaClientError as e:
            if e.status_code == 404:
                return None
            raise self._fail(e, f"read dashboard '{uid}'") from None
        except Exception as e:  # noqa: BLE001
            raise self._fail(e, f"read dashboard '{uid}'") from None
        return (got or {}).get("dashboard", {}).get("version")

    def post_annotations(self, annotations: List[dict]) -> (int, int):
        """Post the annotations Grafana does not have yet (same time and text); returns
        (posted, already there), so that pushing twice adds nothing."""
        if not annotations:
            return 0, 0
        t0 = min(a["time"] for a in annotations)
        t1 = max(a.get("timeEnd", a["time"]) for a in annotations)
        existing = self._call("find annotations", self.api.annotations.find_annotations,
                              time_from=t0, time_to=t1 + 1, tags=config.ANNOTATION_TAGS,
                              ann_type="annotation", limit=10_000) or []
        have = {(a.get("time"), a.get("text")) for a in existing}
        posted = present = 0
        for a in annotations:
            if (a["time"], a["text"]) in have:
                present += 1
                continue
            self._call("post annotation", self.api.annotations.add_annotation,
                       time_from=a["time"], time_to=a.get("timeEnd", a["time"]),
                       tags=a["tags"], text=a["text"])
            have.add((a["time"], a["text"]))
            posted += 1
        return posted, present


def annotations_from_state(path: str) -> List[dict]:
    """One annotation per regression in the detector's state file: from its first
    detection to its resolution (a point while it is open), text and tags as the
    detector writes them for its transitions."""
    from foliowatch.detector.outputs import grafana_annotations
    from foliowatch.detector.records import RegressionState, Transition
    if not Path(path).is_file():
        raise InputError(f"--state {path}: no such file; give the state file of "
                         "`foliowatch detect --state`")
    try:
        state = RegressionState(path)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"--state {path}: not a detector state file ({e})") from None
    out = []
    for rec in sorted(state.records.values(), key=lambda r: (r.first_detected_at, r.id)):
        a = grafana_annotations([Transition(rec, None)])[0]
        start = int(datetime.fromisoformat(rec.first_detected_at).timestamp() * 1000)
        end = (int(datetime.fromisoformat(rec.resolved_at).timestamp() * 1000)
               if rec.status == "resolved" and rec.resolved_at else start)
        out.append({**a, "time": start, "timeEnd": end})
    return out


def annotations_from_file(path: str) -> List[dict]:
    """The JSON list `foliowatch detect --annotations PATH` appends transitions to."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise InputError(f"--annotations {path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"--annotations {path}: not JSON ({e})") from None
    if not isinstance(data, list) or not all(
            isinstance(a, dict) and isinstance(a.get("time"), int) and isinstance(a.get("text"), str)
            for a in data):
        raise InputError(f"--annotations {path}: expected a JSON list of "
                         "{time, timeEnd, tags, text} as `foliowatch detect --annotations` writes")
    return data


def push(url: str, token: str, dashboards: Dict[str, dict], *, folder_uid: str = config.FOLDER_UID,
         folder_title: str = config.FOLDER_TITLE, overwrite: bool = False,
         annotations: Optional[List[dict]] = None, timeout_s: float = 10.0) -> PushResult:
    g = GrafanaPusher(url, token, timeout_s)
    res = PushResult(folder_uid=folder_uid)
    res.folder_created = g.ensure_folder(folder_uid, folder_title)
    for dash in dashboards.values():
        res.dashboards[dash["uid"]] = g.push_dashboard(dash, folder_uid, overwrite)
    res.annotations_posted, res.annotations_present = g.post_annotations(annotations or [])
    return res
