"""A critical alert reaches a person: a real Alertmanager, run with the repo's config as
deploy/alertmanager/configure-email.sh renders it, mails a firing alert to a real SMTP
server (aiosmtpd) on a loopback port.

Needs /usr/bin/prometheus-alertmanager (Debian's prometheus-alertmanager, in .ci/run's apt
list) and aiosmtpd (the test extra).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO

pytestmark = pytest.mark.needs_real

DEPLOY = REPO / "deploy"
CONFIGURE = DEPLOY / "alertmanager" / "configure-email.sh"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
READY_SECONDS = 20.0   # until Alertmanager answers /-/ready
MAIL_SECONDS = 60.0    # the critical route waits group_wait (10 s) before sending
ALERT = "PeerstoreCheckpointAtRisk"  # critical: a checkpoint is one failure from loss
TO, FROM = "owner@peerstore.test", "alerts@peerstore.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """aiosmtpd handler: keeps every message it receives, with its envelope."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        message = email.message_from_bytes(envelope.original_content or envelope.content,
                                           policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        self.arrived.set()
        return "250 OK"


@pytest.fixture
def smtp_sink():
    controller_mod = pytest.importorskip("aiosmtpd.controller",
                                         reason="pip install aiosmtpd (the test extra)")
    sink = Sink()
    controller = controller_mod.Controller(sink, hostname="127.0.0.1", port=free_port(), ready_timeout=10)
    controller.start()
    try:
        yield sink, controller.port
    finally:
        controller.stop()


def rendered_config(tmp_path: Path, smtp_port: int) -> Path:
    env = {**os.environ, "SMTP_SMARTHOST": f"127.0.0.1:{smtp_port}", "ALERT_EMAIL_FROM": FROM,
           "ALERT_EMAIL_TO": TO, "SMTP_REQUIRE_TLS": "false", "SMTP_USERNAME": ""}
    result = subprocess.run(["sh", str(CONFIGURE)], capture_output=True, text=True, env=env, timeout=10)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["global"]["smtp_smarthost"] == f"127.0.0.1:{smtp_port}"
    path = tmp_path / "alertmanager.yml"
    path.write_text(result.stdout)
    return path


def the_alert() -> dict:
    """The labels and annotations Prometheus would send for ALERT (its value: 2 versions)."""
    rules = [r for g in yaml.safe_load(ALERTS_YML.read_text())["groups"] for r in g["rules"]]
    rule = next(r for r in rules if r.get("alert") == ALERT)
    annotations = {k: v.replace("{{ $value }}", "2") for k, v in rule["annotations"].items()}
    return {"labels": {"alertname": ALERT, "job": "peerstore", "cluster": "peerstore", **rule["labels"]},
            "annotations": annotations}


def http(port: int, path: str, body: object | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return reply.read()


def test_a_critical_alert_is_emailed_to_the_configured_person(tmp_path, smtp_sink):
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip("prometheus-alertmanager is not installed; CI installs it (see .ci/run)")
    sink, smtp_port = smtp_sink
    config = rendered_config(tmp_path, smtp_port)
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    with log_path.open("w") as log:
        manager = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            try:
                http(port, "/-/ready")
                break
            except OSError:
                assert time.monotonic() < deadline, "Alertmanager not ready:\n" + log_path.read_text()[-3000:]
                assert manager.poll() is None, "Alertmanager exited:\n" + log_path.read_text()[-3000:]
                time.sleep(0.2)

        alert = the_alert()
        http(port, "/api/v2/alerts", [alert])

        assert sink.arrived.wait(MAIL_SECONDS), (
            f"no email within {MAIL_SECONDS:.0f}s; alertmanager log:\n" + log_path.read_text()[-3000:])
        mail_from, rcpt_tos, message = sink.messages[0]
        assert mail_from == FROM and rcpt_tos == [TO]
        assert message["To"] == TO
        assert ALERT in message["Subject"] and "FIRING" in message["Subject"]
        text = message.get_body(preferencelist=("plain",)).get_content()
        summary = alert["annotations"]["summary"]
        assert summary == "2 checkpoint version(s) have tolerance 0: one more node failure can lose them"
        assert f"FIRING: {ALERT} (critical)" in text
        assert summary in text
        assert "What to do: Keep every node up" in text  # the runbook, so the reader can act
    finally:
        manager.terminate()
        try:
            manager.wait(timeout=10)
        except subprocess.TimeoutExpired:
            manager.kill()
            manager.wait(timeout=10)
