"""`foliowatch dashboards push` against an HTTP server started here that answers as
Grafana's HTTP API documents it (no Grafana server package is available to run the real
one): paths and methods (GET/POST /api/folders, GET /api/dashboards/uid/:uid, POST
/api/dashboards/db, GET/POST /api/annotations), the `Authorization: Bearer` header, the
request bodies' fields, and the documented refusals: 401 for a bad token, 403 for a
token without the permission, 412 {"status": "version-mismatch"} when the dashboard's
version in Grafana is not the one the save was based on."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from foliowatch.dashboards import config, generate, push
from foliowatch.errors import ConfigError, ServiceError
from foliowatch.shell import cli
from foliowatch.shell.services import free_port

EDITOR, VIEWER = "glsa_editor_token", "glsa_viewer_token"
DASHBOARD_BODY_FIELDS = {"dashboard", "folderUid", "folderId", "overwrite", "message"}
ANNOTATION_BODY_FIELDS = {"dashboardUID", "dashboardId", "panelId", "time", "timeEnd", "tags", "text"}


class FakeGrafana:
    """Grafana's documented HTTP API, in memory. ``changed_meanwhile`` makes someone
    else save a dashboard right after it is read (the race a version check exists for)."""

    def __init__(self):
        self.folders = {}
        self.dashboards = {}        # uid -> (dashboard json with version, folderUid)
        self.annotations = []
        self.requests = []          # (method, path, headers, body)
        self.problems = []          # documented-API violations seen
        self.changed_meanwhile = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = None
                if raw:
                    if not self.headers.get("Content-Type", "").startswith("application/json"):
                        owner.problems.append(f"{method} {self.path}: body without JSON content type")
                    body = json.loads(raw)
                owner.requests.append((method, self.path, dict(self.headers), body))
                code, out = owner.route(method, self.path, self.headers.get("Authorization"), body)
                self._reply(code, out)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

            def do_DELETE(self):
                self._handle("DELETE")

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}/"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # -- the API --------------------------------------------------------------------
    def route(self, method, path, auth, body):
        u = urlparse(path)
        p, q = u.path, parse_qs(u.query)
        if not p.startswith("/api/"):
            return 404, {"message": "Not found"}
        if auth not in (f"Bearer {EDITOR}", f"Bearer {VIEWER}"):
            return 401, {"message": "invalid API key", "messageId": "auth.unauthorized"}
        editor = auth == f"Bearer {EDITOR}"
        if method == "GET" and p.startswith("/api/folders/"):
            uid = p.rsplit("/", 1)[1]
            f = self.folders.get(uid)
            return (200, f) if f else (404, {"message": "folder not found", "status": "not-found"})
        if method == "POST" and p == "/api/folders":
            if not isinstance(body, dict) or not isinstance(body.get("title"), str):
                return 400, {"message": "bad request data: title required"}
            if set(body) - {"uid", "title", "parentUid", "description"}:
                self.problems.append(f"POST /api/folders: unknown fields {set(body)}")
            if not editor:
                return 403, {"message": "You'll need additional permissions to perform this "
                                        "action. Permissions needed: folders:create"}
            uid = body.get("uid") or f"f{len(self.folders)}"
            self.folders[uid] = {"id": len(self.folders) + 1, "uid": uid, "title": body["title"],
                                 "url": f"/dashboards/f/{uid}/", "version": 1}
            return 200, self.folders[uid]
        if method == "GET" and p.startswith("/api/dashboards/uid/"):
            uid = p.rsplit("/", 1)[1]
            if uid not in self.dashboards:
                return 404, {"message": "Dashboard not found"}
            dash, folder = self.dashboards[uid]
            if self.changed_meanwhile:      # someone saves right after this read
                self.dashboards[uid] = ({**dash, "version": dash["version"] + 1}, folder)
            return 200, {"dashboard": dash, "meta": {"folderUid": folder, "version": dash["version"]}}
        if method == "POST" and p == "/api/dashboards/db":
            return self.save_dashboard(body, editor)
        if method == "POST" and p == "/api/annotations":
            if not isinstance(body, dict) or set(body) - ANNOTATION_BODY_FIELDS:
                self.problems.append(f"POST /api/annotations: fields {body}")
                return 400, {"message": "bad request data"}
            if not isinstance(body.get("text"), str) or not isinstance(body.get("time"), int):
                return 400, {"message": "bad request data: text and time (epoch ms) required"}
            if not editor:
                return 403, {"message": "You'll need additional permissions to perform this "
                                        "action. Permissions needed: annotations:create"}
            self.annotations.append({**body, "id": len(self.annotations) + 1, "type": "annotation"})
            return 200, {"message": "Annotation added", "id": len(self.annotations)}
        if method == "GET" and p == "/api/annotations":
            tags = q.get("tags", [])
            t0, t1 = int(q.get("from", [0])[0]), int(q.get("to", [2 ** 62])[0])
            out = [a for a in self.annotations if set(tags) <= set(a.get("tags", []))
                   and t0 <= a["time"] <= t1]
            return 200, out[: int(q.get("limit", [100])[0])]
        self.problems.append(f"undocumented call {method} {p}")
        return 404, {"message": "Not found"}

    def save_dashboard(self, body, editor):
        if not isinstance(body, dict) or not isinstance(body.get("dashboard"), dict):
            return 400, {"message": "bad request data: dashboard required"}
        if set(body) - DASHBOARD_BODY_FIELDS:
            self.problems.append(f"POST /api/dashboards/db: unknown fields {set(body)}")
        dash = body["dashboard"]
        if not isinstance(dash.get("title"), str) or not dash.get("uid"):
            return 400, {"message": "Dashboard title cannot be empty"}
        if dash.get("id") is not None:
            self.problems.append("POST /api/dashboards/db: dashboard.id set (must be null to save by uid)")
        folder = body.get("folderUid")
        if folder and folder not in self.folders:
            return 400, {"message": "folder not found", "status": "not-found"}
        if not editor:
            return 403, {"message": "You'll need additional permissions to perform this action. "
                                    "Permissions needed: dashboards:write"}
        uid = dash["uid"]
        current = self.dashboards.get(uid)
        if current and not body.get("overwrite") and dash.get("version") != current[0]["version"]:
            return 412, {"message": "The dashboard has been changed by someone else",
                         "status": "version-mismatch"}
        version = (current[0]["version"] + 1) if current else 1
        self.dashboards[uid] = ({**dash, "version": version, "id": 7}, folder)
        return 200, {"id": 7, "uid": uid, "url": f"/d/{uid}/x", "status": "success",
                     "version": version, "slug": "x"}


@pytest.fixture
def grafana():
    with FakeGrafana() as g:
        yield g


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv(push.TOKEN_ENV, EDITOR)


def _record(**over):
    """A detector record as the state file keeps it."""
    from foliowatch.detector.records import RegressionRecord
    base = dict(id="payments-db/postgres/arm64/4096/xfs/6.6.87-101.aarch64->6.12.40-63.aarch64",
                fleet="payments-db", role="postgres", arch="arm64", page_size=4096, fs="xfs",
                kernel_from="6.6.87-101.aarch64", kernel_to="6.12.40-63.aarch64",
                status="confirmed", metric="write_mib_s", statistic="median", effect=0.76,
                ci_low=0.71, ci_high=0.82, effect_kind="ratio", p_value=1e-9, q_value=1e-8,
                hosts_new=12, hosts_base=1195, hosts_in_group=800, impact=0.2, windows=30,
                first_detected_at="2026-11-02T14:05:00+00:00", updated_at="2026-11-02T18:00:00+00:00",
                headline="write throughput 0.76x [0.71, 0.82], 12 canaries vs 1,195 baseline hosts")
    base.update(over)
    return RegressionRecord.from_dict(base)


def _state_file(tmp_path):
    from foliowatch.detector.records import RegressionState
    st = RegressionState(str(tmp_path / "state.json"))
    st.records = {r.id: r for r in (
        _record(),
        _record(id="payments-db/postgres/arm64/65536/xfs/a->b", page_size=65536, status="resolved",
                first_detected_at="2026-11-02T15:00:00+00:00",
                resolved_at="2026-11-02T20:00:00+00:00", resolution="rolled back"))}
    st.save()
    return tmp_path / "state.json"


def test_push_creates_the_folder_the_dashboards_and_the_annotations(grafana, token_env, tmp_path, capsys):
    state = _state_file(tmp_path)
    assert cli.main(["dashboards", "push", "--url", grafana.url, "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert grafana.problems == []
    assert all(h.get("Authorization") == f"Bearer {EDITOR}" for _m, _p, h, _b in grafana.requests)
    calls = [(m, urlparse(p).path) for m, p, _h, _b in grafana.requests]
    assert calls[:2] == [("GET", f"/api/folders/{config.FOLDER_UID}"), ("POST", "/api/folders")]
    assert grafana.folders[config.FOLDER_UID]["title"] == config.FOLDER_TITLE
    saves = [b for m, p, _h, b in grafana.requests if p == "/api/dashboards/db"]
    assert [b["dashboard"]["uid"] for b in saves] == [d["uid"] for d in generate.dashboards().values()]
    for b in saves:
        assert b["folderUid"] == config.FOLDER_UID and b["overwrite"] is False and b["message"]
        assert "version" not in b["dashboard"] and "id" not in b["dashboard"]   # new dashboards
    # what Grafana holds is the generated JSON
    for d in generate.dashboards().values():
        held, folder = grafana.dashboards[d["uid"]]
        assert folder == config.FOLDER_UID
        assert {k: v for k, v in held.items() if k not in ("id", "version")} == d
    # one annotation per regression: from first detection, a region until its resolution
    assert len(grafana.annotations) == 2
    open_, resolved = sorted(grafana.annotations, key=lambda a: a["time"])
    detected = int(datetime(2026, 11, 2, 14, 5, tzinfo=timezone.utc).timestamp() * 1000)
    assert open_["time"] == open_["timeEnd"] == detected
    assert resolved["timeEnd"] - resolved["time"] == 5 * 3600 * 1000
    for a in grafana.annotations:
        assert set(config.ANNOTATION_TAGS) <= set(a["tags"])
    assert "write throughput 0.76x [0.71, 0.82]" in open_["text"]
    assert "annotations: 2 posted, 0 already there" in out


def test_a_second_push_updates_in_place_and_adds_no_annotation(grafana, token_env, tmp_path, capsys):
    state = _state_file(tmp_path)
    assert cli.main(["dashboards", "push", "--url", grafana.url, "--state", str(state)]) == 0
    n_folder_posts = sum(1 for m, p, _h, _b in grafana.requests if m == "POST" and p == "/api/folders")
    assert cli.main(["dashboards", "push", "--url", grafana.url, "--state", str(state)]) == 0
    assert sum(1 for m, p, _h, _b in grafana.requests if m == "POST" and p == "/api/folders") == n_folder_posts
    second = [b for m, p, _h, b in grafana.requests if p == "/api/dashboards/db"][-3:]
    assert all(b["dashboard"]["version"] == 1 for b in second)     # based on what it read
    assert all(v[0]["version"] == 2 for v in grafana.dashboards.values())
    assert len(grafana.annotations) == 2
    assert "annotations: 0 posted, 2 already there" in capsys.readouterr().out
    assert grafana.problems == []


def test_wrong_url_is_one_line_naming_the_url(token_env, capsys):
    url = f"http://127.0.0.1:{free_port()}/"        # nothing listens there
    with pytest.raises(ServiceError, match=r"cannot read folder 'foliowatch': connection refused; check --url"):
        push.push(url, EDITOR, generate.dashboards())
    assert cli.main(["dashboards", "push", "--url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "connection refused" in err


def test_url_that_is_not_grafanas_api_says_check_the_url(grafana, token_env):
    with pytest.raises(ConfigError, match=r"--url: expected http\(s\)://host"):
        push.push("grafana.example:3000", EDITOR, {})


def test_bad_token_is_a_401_error_naming_where_the_token_comes_from(grafana, monkeypatch, capsys):
    monkeypatch.setenv(push.TOKEN_ENV, "glsa_revoked")
    assert cli.main(["dashboards", "push", "--url", grafana.url]) == 2
    err = capsys.readouterr().err
    assert "refused the token (401 Unauthorized)" in err and push.TOKEN_ENV in err
    assert err.count("\n") == 1
    assert grafana.dashboards == {}


def test_token_without_folder_permission_is_a_403_error(grafana, tmp_path, capsys):
    tok = tmp_path / "token"
    tok.write_text(VIEWER + "\n")
    assert cli.main(["dashboards", "push", "--url", grafana.url, "--token-file", str(tok)]) == 2
    err = capsys.readouterr().err
    assert "may not create folder 'foliowatch' (403 Forbidden" in err
    assert "folders:create" in err and "Editor role" in err
    assert all(h.get("Authorization") == f"Bearer {VIEWER}" for _m, _p, h, _b in grafana.requests)


def test_a_dashboard_changed_meanwhile_is_a_412_version_mismatch_and_overwrite_replaces_it(
        grafana, token_env, capsys):
    assert cli.main(["dashboards", "push", "--url", grafana.url]) == 0
    grafana.changed_meanwhile = True
    capsys.readouterr()
    assert cli.main(["dashboards", "push", "--url", grafana.url]) == 2
    err = capsys.readouterr().err
    assert "cannot save dashboard 'foliowatch-kernel-rollout': 412 version-mismatch" in err
    assert "--overwrite" in err and err.count("\n") == 1
    assert cli.main(["dashboards", "push", "--url", grafana.url, "--overwrite"]) == 0
    last = [b for m, p, _h, b in grafana.requests if p == "/api/dashboards/db"][-3:]
    assert all(b["overwrite"] is True and "version" not in b["dashboard"] for b in last)


def test_token_comes_from_env_or_file_never_a_flag(grafana, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(push.TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit):
        cli.main(["dashboards", "push", "--url", grafana.url, "--token", EDITOR])
    err = capsys.readouterr().err       # refused, not taken for an abbreviated --token-file
    assert "unrecognized arguments: --token" in err and "cannot read it" not in err
    assert cli.main(["dashboards", "push", "--url", grafana.url]) == 2
    assert f"no Grafana token: set {push.TOKEN_ENV} or pass --token-file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="the file is empty"):
        push.read_token(str(empty))
    with pytest.raises(ConfigError, match="cannot read it"):
        push.read_token(str(tmp_path / "missing"))
    assert grafana.requests == []


def test_annotations_file_of_the_detector_is_posted(grafana, token_env, tmp_path):
    from foliowatch.detector.outputs import grafana_annotations
    from foliowatch.detector.records import Transition
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(grafana_annotations([Transition(_record(), "suspected")])))
    res = push.push(grafana.url, EDITOR, {}, annotations=push.annotations_from_file(str(path)))
    assert res.annotations_posted == 1
    assert grafana.annotations[0]["text"].startswith("confirmed: payments-db/postgres arm64")
    bad = tmp_path / "bad.json"
    bad.write_text('{"time": 1}')
    with pytest.raises(Exception, match="expected a JSON list"):
        push.annotations_from_file(str(bad))
