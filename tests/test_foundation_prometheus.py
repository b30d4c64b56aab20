"""Prometheus and Alertmanager from Debian packages: start on loopback, scrape, accept alerts."""
import http.server
import threading
import time

import pytest

from foliowatch.shell.services import Prometheus, ServiceError


class _Target(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"# TYPE foliowatch_probe_total counter\nfoliowatch_probe_total 7\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_prometheus_scrapes_a_real_target(prometheus_factory):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Target)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        prom = prometheus_factory(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: t\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{srv.server_address[1]}']\n")
        deadline = time.monotonic() + 30
        value = None
        while time.monotonic() < deadline:
            res = prom.query("foliowatch_probe_total")["data"]["result"]
            if res:
                value = float(res[0]["value"][1])
                break
            time.sleep(0.5)
        assert value == 7.0
        up = prom.query('up{job="t"}')["data"]["result"]
        assert up and up[0]["value"][1] == "1"
    finally:
        srv.shutdown()


def test_alertmanager_accepts_an_alert_via_v2_api(alertmanager):
    alert = [{"labels": {"alertname": "FoliowatchRegression", "fleet": "db", "severity": "page"},
              "annotations": {"summary": "write throughput 0.75x"}}]
    status, _ = alertmanager.post_json("/api/v2/alerts", alert)
    assert status == 200
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = alertmanager.get_json("/api/v2/alerts")
        if got:
            break
        time.sleep(0.3)
    assert [a["labels"]["alertname"] for a in got] == ["FoliowatchRegression"]
    assert got[0]["labels"]["fleet"] == "db"


def test_a_service_that_cannot_start_fails_loudly(tmp_path):
    bad = Prometheus(tmp_path / "bad", "scrape_configs: [ this is not valid")
    with pytest.raises(ServiceError) as e:
        bad.start(timeout=20)
    assert "prometheus" in str(e.value)
