"""Delivering alert notifications: syslog, SMTP, webhook — each retried, rate-limited, its state kept.

Per channel:
- an outbox: a notification that cannot be delivered (SMTP server down, webhook answers 500) stays and is
  retried with backoff (30 s, 1, 2, 4, 8, then every 10 min) until it is `retry_minutes` old, then given up
  (logged at ERROR, counted). The channel's failure is itself a warning in `status`.
- a rate limit: at most `max_per_hour` notifications in any hour. Beyond it, notifications are counted and
  not sent; once the hour allows again, one summary says how many were held back and what is active now.
The outbox, the send times and the counters persist in alerts.json (alerts.py) with the active alerts.

Syslog: to the local syslog socket (`/dev/log`, the default) as a classic `dicom-router[pid]: …` line the
local rsyslog/journald understands (and forwards to the SIEM as configured there); to `host:port` as an
RFC 5424 message over UDP, straight to a collector. UDP gives no delivery confirmation: `/dev/log` is the
reliable route. Facility from config; severity err for errors, warning for warnings, notice for clears.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from .alerts import Notification
from .config import RouterConfig
from .config_trust import SmtpTarget, SyslogTarget, WebhookTarget
from .logsetup import log

LOG = logging.getLogger("router.alerts")
BACKOFF_FIRST_SECONDS = 30.0
BACKOFF_MAX_SECONDS = 600.0
OUTBOX_MAX = 500  # per channel; beyond, the oldest are dropped (counted as given up)
RATE_WINDOW_SECONDS = 3600.0
SYSLOG_UDP_PORT = 514
SD_ID = "dicomRouter@32473"  # RFC 5424 structured data id (32473: the example enterprise number of RFC 5612)


class DeliveryError(Exception):
    """A notification did not reach the channel; the message says where and why."""


def router_name(cfg: RouterConfig) -> str:
    return f"{cfg.router.ae_title}@{socket.gethostname()}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def payload(n: Notification, router: str) -> dict[str, Any]:
    """The JSON a webhook receives (and the fields of the other channels)."""
    return {
        "router": router,
        "event": n.event,
        "key": n.key,
        "level": n.level,
        "message": n.message,
        "since": _iso(n.since),
        "at": _iso(n.at),
    }


# -- channels --------------------------------------------------------------------------------------
class Channel:
    name = "?"

    def send(self, n: Notification) -> None:
        raise NotImplementedError


class _CheckedSysLogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler reports send errors to stderr; keep them so the dispatcher can retry."""

    failure: BaseException | None = None

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        import sys

        self.failure = sys.exc_info()[1]

    def mapPriority(self, levelName: str) -> str:  # noqa: N802,N803 - logging's names
        return {"ERROR": "err", "WARNING": "warning", "INFO": "notice"}.get(levelName, "notice")


class SyslogChannel(Channel):
    name = "syslog"

    def __init__(self, target: SyslogTarget, router: str):
        self.target = target
        self.router = router
        self.remote = _host_port(target.address)

    def _line(self, n: Notification) -> str:
        text = f"{n.event} {n.level} {n.key}: {n.message}"
        if self.remote is None:  # local socket: the classic form journald and rsyslog's imuxsock parse
            return f"dicom-router[{os.getpid()}]: {text}"
        sd = (
            f'[{SD_ID} event="{_sd(n.event)}" level="{_sd(n.level)}" key="{_sd(n.key)}" '
            f'since="{_iso(n.since)}" router="{_sd(self.router)}"]'
        )
        host = socket.gethostname() or "-"
        return f"1 {_iso(n.at)} {host} dicom-router {os.getpid()} alert {sd} {text}"

    def send(self, n: Notification) -> None:
        address: Any = self.remote if self.remote is not None else self.target.address
        try:
            handler = _CheckedSysLogHandler(address=address, facility=self.target.facility)
        except OSError as exc:
            raise DeliveryError(f"cannot open syslog {self.target.address}: {exc.strerror or exc}") from exc
        try:
            level = {"error": logging.ERROR, "warning": logging.WARNING}.get(n.level, logging.WARNING)
            if n.event == "cleared":
                level = logging.INFO
            record = logging.LogRecord("router.alerts", level, __file__, 0, self._line(n), None, None)
            handler.emit(record)
        finally:
            handler.close()
        if handler.failure is not None:
            hint = " — is the syslog daemon (rsyslog/journald) running?" if self.remote is None else ""
            raise DeliveryError(f"syslog {self.target.address}: {handler.failure}{hint}")


def _sd(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _host_port(address: str) -> tuple[str, int] | None:
    """'host:port' / '[v6]:port' / 'host' → a UDP address; a path (the local socket) → None."""
    if address.startswith("/"):
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or (":" in host and not host.startswith("[")):
        return address.strip("[]"), SYSLOG_UDP_PORT  # a bare host name or IPv6 address: the standard port
    return host.strip("[]"), int(port)


class SmtpChannel(Channel):
    name = "smtp"

    def __init__(self, target: SmtpTarget, router: str):
        self.target = target
        self.router = router

    def _password(self) -> str | None:
        if self.target.password_file is None:
            return None
        try:
            return self.target.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise DeliveryError(f"cannot read alerts.smtp.password_file {self.target.password_file}: {exc}") from exc

    def _tls(self) -> ssl.SSLContext:
        ca = self.target.ca
        return ssl.create_default_context(cafile=str(ca) if ca else None)

    def message(self, n: Notification) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.target.sender
        msg["To"] = ", ".join(self.target.to)
        msg["Subject"] = n.subject(self.router)
        body = [
            n.message,
            "",
            f"event:   {n.event}",
            f"level:   {n.level}",
            f"alert:   {n.key}",
            f"since:   {_iso(n.since)}",
            f"router:  {self.router}",
            "",
            "`dicom-router status` on the appliance shows every active alert; docs/monitoring.md explains each.",
        ]
        msg.set_content("\n".join(body))
        return msg

    def send(self, n: Notification) -> None:
        t = self.target
        where = f"SMTP server {t.host}:{t.port}"
        try:
            if t.security == "tls":
                client: smtplib.SMTP = smtplib.SMTP_SSL(t.host, t.port, timeout=t.timeout_seconds, context=self._tls())
            else:
                client = smtplib.SMTP(t.host, t.port, timeout=t.timeout_seconds)
            with client:
                if t.security == "starttls":
                    client.starttls(context=self._tls())
                password = self._password()
                if t.username and password is not None:
                    client.login(t.username, password)
                client.send_message(self.message(n))
        except DeliveryError:
            raise
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}") from exc


class WebhookChannel(Channel):
    name = "webhook"

    def __init__(self, target: WebhookTarget, router: str):
        self.target = target
        self.router = router

    def send(self, n: Notification) -> None:
        t = self.target
        body = json.dumps(payload(n, self.router)).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "dicom-router-alerts", **t.headers}
        request = urllib.request.Request(t.url, data=body, headers=headers, method="POST")
        context = ssl.create_default_context(cafile=str(t.ca)) if t.ca and t.url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=t.timeout_seconds, context=context) as r:
                r.read(1024)
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook {_safe_url(t.url)} answered HTTP {exc.code} {exc.reason}") from exc
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"webhook {_safe_url(t.url)}: {reason}") from exc


def _safe_url(url: str) -> str:
    """The URL without credentials or query (a token often lives there)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"


def channels_for(cfg: RouterConfig) -> list[Channel]:
    a = cfg.alerts
    router = router_name(cfg)
    out: list[Channel] = []
    if a.syslog.enabled:
        out.append(SyslogChannel(a.syslog, router))
    if a.smtp is not None:
        out.append(SmtpChannel(a.smtp, router))
    if a.webhook is not None:
        out.append(WebhookChannel(a.webhook, router))
    return out


# -- the dispatcher --------------------------------------------------------------------------------
def _backoff(failures: int) -> float:
    return min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, failures - 1))


class ChannelState:
    """One channel's outbox, recent send times, suppressed notifications and counters (persisted)."""

    def __init__(self, doc: dict[str, Any] | None = None):
        doc = doc or {}
        self.outbox: list[dict[str, Any]] = list(doc.get("outbox", []))
        self.sent_at: list[float] = [float(t) for t in doc.get("sent_at", [])]
        self.suppressed: list[dict[str, Any]] = list(doc.get("suppressed", []))
        self.failures = int(doc.get("failures", 0))
        self.failing_since: float | None = doc.get("failing_since")
        self.next_attempt_at = float(doc.get("next_attempt_at", 0.0))
        self.last_error: str | None = doc.get("last_error")
        self.counts: dict[str, int] = {k: int(v) for k, v in doc.get("counts", {}).items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "outbox": self.outbox,
            "sent_at": self.sent_at,
            "suppressed": self.suppressed,
            "failures": self.failures,
            "failing_since": self.failing_since,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "counts": self.counts,
        }

    def count(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + n


class Dispatcher:
    """Rate-limits, queues and sends notifications on every configured channel."""

    def __init__(self, cfg: RouterConfig, states: dict[str, Any] | None = None, channels: list[Channel] | None = None):
        self.cfg = cfg
        self.channels = channels if channels is not None else channels_for(cfg)
        states = states or {}
        self.states = {ch.name: ChannelState(states.get(ch.name)) for ch in self.channels}

    def submit(self, notifications: list[Notification], now: float) -> None:
        limit = self.cfg.alerts.max_per_hour
        for ch in self.channels:
            st = self.states[ch.name]
            st.sent_at = [t for t in st.sent_at if now - t < RATE_WINDOW_SECONDS]
            for n in notifications:
                if len(st.sent_at) >= limit:
                    st.suppressed.append({"event": n.event, "key": n.key, "level": n.level, "at": now})
                    st.count("suppressed")
                    continue
                st.sent_at.append(now)
                st.outbox.append(asdict(n))
            if len(st.outbox) > OUTBOX_MAX:
                dropped = len(st.outbox) - OUTBOX_MAX
                st.outbox = st.outbox[dropped:]
                st.count("given_up", dropped)
                log(LOG, logging.ERROR, f"alert channel {ch.name}: outbox full, dropped the {dropped} oldest")

    def summarise(self, now: float, active: Callable[[], list[str]]) -> None:
        """Once the hour allows again: one notification saying what the rate limit held back."""
        limit = self.cfg.alerts.max_per_hour
        for ch in self.channels:
            st = self.states[ch.name]
            st.sent_at = [t for t in st.sent_at if now - t < RATE_WINDOW_SECONDS]
            if not st.suppressed or len(st.sent_at) >= limit:
                continue
            kinds: dict[str, int] = {}
            for s in st.suppressed:
                kinds[s["event"]] = kinds.get(s["event"], 0) + 1
            first = min(s["at"] for s in st.suppressed)
            what = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            now_active = active()
            tail = f"; active now: {'; '.join(now_active)}" if now_active else "; nothing is active now"
            message = (
                f"{len(st.suppressed)} alert notification(s) not sent since {_iso(first)} "
                f"(alerts.max_per_hour {limit}): {what}{tail}"
            )
            level = "error" if any(s["level"] == "error" for s in st.suppressed) else "warning"
            st.suppressed = []
            st.sent_at.append(now)
            st.outbox.append(asdict(Notification("suppressed", "rate-limit", level, message, first, now)))

    def flush(self, now: float) -> None:
        """Send what is due on every channel; a failure stops that channel until its backoff has passed."""
        retry_seconds = self.cfg.alerts.retry_minutes * 60
        for ch in self.channels:
            st = self.states[ch.name]
            expired = [n for n in st.outbox if now - n["at"] > retry_seconds]
            if expired:
                st.outbox = [n for n in st.outbox if now - n["at"] <= retry_seconds]
                st.count("given_up", len(expired))
                log(
                    LOG,
                    logging.ERROR,
                    f"gave up delivering {len(expired)} alert notification(s) by {ch.name} after "
                    f"{self.cfg.alerts.retry_minutes:g} min of failures: {st.last_error} — the alerts are still in "
                    "`dicom-router status`",
                    channel=ch.name,
                )
            if not st.outbox or now < st.next_attempt_at:
                continue
            while st.outbox:
                n = Notification(**st.outbox[0])
                try:
                    ch.send(n)
                except DeliveryError as exc:
                    self._failed(ch.name, st, str(exc), now)
                    break
                st.outbox.pop(0)
                st.count("sent")
                if st.failing_since is not None:
                    log(LOG, logging.INFO, f"alert delivery by {ch.name} works again", channel=ch.name)
                st.failures, st.failing_since, st.next_attempt_at, st.last_error = 0, None, 0.0, None

    def _failed(self, name: str, st: ChannelState, error: str, now: float) -> None:
        st.failures += 1
        st.count("failed_attempt")
        delay = _backoff(st.failures)
        st.next_attempt_at = now + delay
        if st.failing_since is None:
            st.failing_since = now
        if st.last_error != error or st.failures == 1:
            log(
                LOG,
                logging.WARNING,
                f"alert delivery by {name} failed: {error} — {len(st.outbox)} notification(s) wait, next try in "
                f"{delay:.0f} s",
                channel=name,
            )
        st.last_error = error

    def problems(self, now: float) -> list[str]:
        """Channels failing now, in words for `status`."""
        out = []
        for ch in self.channels:
            st = self.states[ch.name]
            if st.failing_since is not None and st.outbox:
                minutes = (now - st.failing_since) / 60
                out.append(
                    f"alert delivery by {ch.name} failing for {minutes:.0f} min ({len(st.outbox)} notification(s) "
                    f"waiting, retried until {self.cfg.alerts.retry_minutes:g} min old): {st.last_error} — check "
                    f"alerts.{ch.name} in router.yaml and that the {ch.name} service is reachable"
                )
        return out

    def to_json(self) -> dict[str, Any]:
        return {name: st.to_json() for name, st in self.states.items()}


def send_test(cfg: RouterConfig, now: float | None = None) -> list[tuple[str, str | None]]:
    """`dicom-router alerts test`: one test notification on each channel, now; (channel, error or None)."""
    now = time.time() if now is None else now
    n = Notification(
        "test", "test", "warning", "test notification from `dicom-router alerts test`: delivery works", now, now
    )
    results: list[tuple[str, str | None]] = []
    for ch in channels_for(cfg):
        try:
            ch.send(n)
        except DeliveryError as exc:
            results.append((ch.name, str(exc)))
        else:
            results.append((ch.name, None))
    return results
