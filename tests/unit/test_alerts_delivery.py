"""appliance.router.alert_delivery against real receivers started here: an aiosmtpd SMTP sink, an
http.server webhook receiver (one that fails first, to see the retries), a UDP syslog collector and a
unix-socket syslog. Time is passed in (`now`), so backoff and the hourly rate limit need no waiting."""

from __future__ import annotations

import email.policy
import json
import logging
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from appliance.router import alert_delivery as delivery
from appliance.router.alerts import Notification
from appliance.router.cli import main as cli_main
from appliance.router.config import RouterConfig, parse_config
from tests.support.peers import free_port


def config(tmp_path: Path, alerts_block: str) -> RouterConfig:
    return parse_config(
        f"""
router:
  ae_title: ROUTER_T
  state_dir: {tmp_path / "state"}
  log_dir: {tmp_path / "log"}
alerts:
{alerts_block}
"""
    )


def note(event: str = "raised", key: str = "backlog-age:PACS", at: float = 1000.0) -> Notification:
    return Notification(event, key, "warning", f"backlog to PACS: 5 job(s) waiting ({key})", at, at)


# -- receivers -------------------------------------------------------------------------------------
class Webhook:
    """Records JSON bodies; answers `fail_first` requests with HTTP 500 first."""

    def __init__(self, fail_first: int = 0):
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.requests = 0
        self.fail_first = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.requests += 1
                if hook.requests <= hook.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                hook.bodies.append(json.loads(body))
                hook.headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts?token=s3cret"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


class SmtpSink:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=email.policy.default)))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpSink, int]]:
    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


@pytest.fixture
def udp_syslog() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()


# -- channels --------------------------------------------------------------------------------------
def test_webhook_gets_the_alert_as_json_with_configured_headers(tmp_path: Path, webhook: Webhook) -> None:
    cfg = config(
        tmp_path,
        f"  syslog: {{enabled: false}}\n  webhook: {{url: '{webhook.url}', headers: {{Authorization: Bearer t0k}}}}",
    )
    d = delivery.Dispatcher(cfg)
    d.submit([note()], 1000.0)
    d.flush(1000.0)
    (body,) = webhook.bodies
    assert body["event"] == "raised" and body["key"] == "backlog-age:PACS" and body["level"] == "warning"
    assert body["router"].startswith("ROUTER_T@") and body["since"] == "1970-01-01T00:16:40Z"
    assert webhook.headers[0]["Authorization"] == "Bearer t0k"
    assert d.states["webhook"].counts == {"sent": 1}


def test_a_failing_webhook_is_retried_with_backoff_then_given_up(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, "router.alerts")
    hook = Webhook(fail_first=2)
    try:
        cfg = config(tmp_path, f"  syslog: {{enabled: false}}\n  webhook: {{url: '{hook.url}'}}\n  retry_minutes: 10")
        d = delivery.Dispatcher(cfg)
        d.submit([note()], 1000.0)
        d.flush(1000.0)  # 500: next try in 30 s
        assert hook.requests == 1 and d.states["webhook"].next_attempt_at == 1030.0
        assert "HTTP 500" in (d.states["webhook"].last_error or "")
        assert "token" not in (d.states["webhook"].last_error or "")  # the URL's query may hold a secret
        (problem,) = d.problems(1010.0)
        assert problem.startswith("alert delivery by webhook failing for 0 min (1 notification(s) waiting")
        d.flush(1010.0)  # inside the backoff: no request
        assert hook.requests == 1
        d.flush(1030.0)  # 500 again: next in 60 s
        assert hook.requests == 2 and d.states["webhook"].next_attempt_at == 1090.0
        d.flush(1090.0)
        assert hook.requests == 3 and [b["key"] for b in hook.bodies] == ["backlog-age:PACS"]
        assert d.problems(1090.0) == [] and d.states["webhook"].counts == {"failed_attempt": 2, "sent": 1}
        assert any("works again" in r.getMessage() for r in caplog.records)

        # a receiver that stays down: the notification is dropped once retry_minutes old, and said so
        hook.fail_first = 10**6
        d.submit([note("cleared")], 2000.0)
        for t in range(2000, 2000 + 11 * 60, 30):
            d.flush(float(t))
        assert d.states["webhook"].outbox == [] and d.states["webhook"].counts["given_up"] == 1
        assert any("gave up delivering 1 alert notification(s) by webhook" in r.getMessage() for r in caplog.records)
    finally:
        hook.close()


def test_the_rate_limit_holds_and_a_summary_follows(tmp_path: Path, webhook: Webhook) -> None:
    cfg = config(tmp_path, f"  syslog: {{enabled: false}}\n  webhook: {{url: '{webhook.url}'}}\n  max_per_hour: 3")
    d = delivery.Dispatcher(cfg)
    d.submit([note(key=f"k{i}") for i in range(5)], 1000.0)
    d.flush(1000.0)
    assert [b["key"] for b in webhook.bodies] == ["k0", "k1", "k2"]
    assert d.states["webhook"].counts == {"suppressed": 2, "sent": 3}
    d.summarise(1000.0 + 1800, lambda: ["backlog to PACS"])  # still inside the hour: nothing yet
    d.flush(1000.0 + 1800)
    assert len(webhook.bodies) == 3
    # persisted and restored (a scheduler restart) before the hour is over
    d = delivery.Dispatcher(cfg, json.loads(json.dumps(d.to_json())))
    d.summarise(1000.0 + 3600, lambda: ["backlog to PACS"])
    d.flush(1000.0 + 3600)
    summary = webhook.bodies[-1]
    assert summary["event"] == "suppressed" and len(webhook.bodies) == 4
    assert summary["message"].startswith("2 alert notification(s) not sent since 1970-01-01T00:16:40Z")
    assert "(alerts.max_per_hour 3): 2 raised; active now: backlog to PACS" in summary["message"]


def test_smtp_delivers_a_readable_mail_to_every_recipient(
    tmp_path: Path, smtp: tuple[SmtpSink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, port = smtp
    cfg = config(
        tmp_path,
        f"  syslog: {{enabled: false}}\n  smtp: {{host: 127.0.0.1, port: {port}, security: none, "
        "sender: router@h.example, to: [oncall@h.example, pacs-admin@h.example]}",
    )
    d = delivery.Dispatcher(cfg)
    d.submit([note(), note("cleared")], 1000.0)
    d.flush(1000.0)
    assert [m[0] for m in sink.messages] == [["oncall@h.example", "pacs-admin@h.example"]] * 2
    mail = sink.messages[0][1]
    assert mail["From"] == "router@h.example"
    assert mail["Subject"].startswith("[ROUTER_T@") and "ALERT warning: backlog to PACS" in mail["Subject"]
    assert "alert:   backlog-age:PACS" in mail.get_content()
    assert "CLEARED" in sink.messages[1][1]["Subject"]


def test_smtp_server_down_is_a_delivery_error_naming_the_server(tmp_path: Path) -> None:
    port = free_port()  # nothing listens
    cfg = config(
        tmp_path,
        f"  syslog: {{enabled: false}}\n  smtp: {{host: 127.0.0.1, port: {port}, security: none, "
        "sender: r@h.example, to: [o@h.example], timeout_seconds: 2}",
    )
    d = delivery.Dispatcher(cfg)
    d.submit([note()], 1000.0)
    d.flush(1000.0)
    assert (d.states["smtp"].last_error or "").startswith(f"SMTP server 127.0.0.1:{port}: ConnectionRefusedError")


def test_syslog_over_udp_is_rfc5424_with_the_configured_facility(tmp_path: Path, udp_syslog: socket.socket) -> None:
    port = udp_syslog.getsockname()[1]
    cfg = config(tmp_path, f"  syslog: {{address: '127.0.0.1:{port}', facility: local3}}")
    d = delivery.Dispatcher(cfg)
    d.submit([Notification("raised", "service-restarts:forwarder", "error", "forwarder crashed", 1000.0, 1000.0)], 1.0)
    d.flush(1.0)
    data = udp_syslog.recv(4096).decode()
    # PRI = local3 (19) * 8 + err (3) = 155; VERSION 1; then timestamp, host, app, pid, msgid, SD, message
    assert data.startswith("<155>1 1970-01-01T00:16:40Z ")
    assert " dicom-router " in data and ' alert [dicomRouter@32473 event="raised" level="error" ' in data
    assert data.rstrip("\x00").endswith("raised error service-restarts:forwarder: forwarder crashed")
    d.submit([Notification("cleared", "k", "error", "cleared: forwarder crashed", 1000.0, 1060.0)], 2.0)
    d.flush(2.0)
    assert udp_syslog.recv(4096).decode().startswith("<157>1 ")  # notice for a clear


def test_syslog_to_a_local_socket_uses_the_classic_form(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        cfg = config(tmp_path, f"  syslog: {{address: '{path}', facility: daemon}}")
        d = delivery.Dispatcher(cfg)
        d.submit([note()], 1.0)
        d.flush(1.0)
        data = sock.recv(4096).decode()
        assert data.startswith("<28>dicom-router[")  # daemon (3) * 8 + warning (4)
        assert "]: raised warning backlog-age:PACS: backlog to PACS" in data
    finally:
        sock.close()
    # the socket gone (rsyslog stopped): a delivery error, retried like the others
    d.submit([note("cleared")], 2.0)
    d.flush(2.0)
    assert (d.states["syslog"].last_error or "").startswith(
        f"syslog {path}: [Errno 111] Connection refused — is the syslog"
    )


def test_alerts_test_command_reports_each_channel(
    tmp_path: Path, webhook: Webhook, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = tmp_path / "router.yaml"
    dead = free_port()
    cfg_path.write_text(
        f"router: {{state_dir: {tmp_path / 'state'}, log_dir: {tmp_path / 'log'}}}\n"
        f"alerts:\n  syslog: {{enabled: false}}\n  webhook: {{url: '{webhook.url}'}}\n"
        f"  smtp: {{host: 127.0.0.1, port: {dead}, security: none, sender: r@h.example, to: [o@h.example]}}\n"
    )
    assert cli_main(["alerts", "test", "--config", str(cfg_path)]) == 1
    out = capsys.readouterr().out
    assert "webhook  sent" in out and f"smtp     FAILED: SMTP server 127.0.0.1:{dead}" in out
    assert webhook.bodies[0]["event"] == "test"
    assert cli_main(["alerts", "ls", "--config", str(cfg_path)]) == 0
    assert capsys.readouterr().out == "no alert active\n"  # nothing evaluated yet: no scheduler ran here


def _private_ca(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, made the way `dicom-router tls` makes them."""
    from appliance.router import tls_ca

    ca = tls_ca.make_ca("alerts test CA", kind="ec-p256")
    server = tls_ca.make_node(ca, "smtp.test", [], ["127.0.0.1"], kind="ec-p256")
    ca_crt, crt, key = tmp_path / "ca.crt", tmp_path / "smtp.crt", tmp_path / "smtp.key"
    tls_ca.write_cert(ca_crt, ca.cert)
    tls_ca.write_cert(crt, server.cert)
    tls_ca.write_key(key, server.key)
    return ca_crt, crt, key


def test_smtp_starttls_with_a_private_ca_and_a_password_file(tmp_path: Path) -> None:
    import ssl

    from aiosmtpd.smtp import AuthResult, LoginPassword

    ca_crt, crt, key = _private_ca(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(crt, key)
    logins: list[tuple[bytes, bytes]] = []

    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret")

    sink, port = SmtpSink(), free_port()
    controller = Controller(
        sink, hostname="127.0.0.1", port=port, tls_context=server_tls, require_starttls=True, authenticator=check
    )
    controller.start()
    try:
        (tmp_path / "smtp.pass").write_text("s3cret\n")
        (tmp_path / "smtp.pass").chmod(0o600)
        block = (
            f"  syslog: {{enabled: false}}\n  smtp: {{host: 127.0.0.1, port: {port}, security: starttls, ca: {ca_crt}, "
            f"username: router, password_file: {tmp_path / 'smtp.pass'}, sender: r@h.example, to: [o@h.example]}}"
        )
        d = delivery.Dispatcher(config(tmp_path, block))
        d.submit([note()], 1000.0)
        d.flush(1000.0)
        assert len(sink.messages) == 1 and logins == [(b"router", b"s3cret")]
        # without the CA the server's certificate cannot be verified: a delivery error that says so
        d = delivery.Dispatcher(config(tmp_path, block.replace(f"ca: {ca_crt}, ", "")))
        d.submit([note()], 1000.0)
        d.flush(1000.0)
        assert "CERTIFICATE_VERIFY_FAILED" in (d.states["smtp"].last_error or "")
    finally:
        controller.stop()
