"""Settings for trust on the wire and afterwards: DICOM TLS, storage commitment, the audit trail, metrics
and alerts. Part of `router.yaml`'s schema (config.py composes them); kept apart so config.py stays about
nodes, routes and the router itself.

Relative certificate paths are taken below `router.tls_dir`; other relative paths (password files, CA
bundles for webhooks) below the config file's directory, like every other path in the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- DICOM TLS ---------------------------------------------------------------------------------------
class ListenerTls(_Strict):
    """The router's own TLS listener, and the certificate it also presents when it connects out."""

    port: Port | None = Field(None, description="TLS listener port (2762 is DICOM's registered TLS port); unset = none")
    plain: bool = Field(True, description="keep the plain listener on router.port; false = TLS only")
    cert: Path = Field(Path("router.crt"), description="the router's certificate (PEM; relative = below tls_dir)")
    key: Path = Field(Path("router.key"), description="its private key (PEM, mode 0600)")
    ca: Path = Field(Path("ca.crt"), description="CA bundle that signs peers' certificates")
    require_client_cert: bool = Field(True, description="TLS callers must present a certificate the CA signed")
    min_version: Literal["1.2", "1.3"] = Field("1.2", description="oldest TLS version accepted or offered")


class NodeTls(_Strict):
    """TLS towards one node. A source with TLS enabled may call only the TLS port; a destination is
    connected to with TLS."""

    enabled: bool = False
    mutual: bool = Field(True, description="outbound: present the router's certificate to this destination")
    ca: Path | None = Field(None, description="CA bundle for this peer's certificate; unset = router.tls.ca")
    peer_name: str | None = Field(
        None,
        description="name (DNS or IP SAN) the peer's certificate must carry; outbound default: the node's host",
    )


# -- storage commitment ------------------------------------------------------------------------------
class CommitmentPolicy(_Strict):
    """Storage Commitment Push Model towards one destination: after sending, ask it to commit."""

    enabled: bool = False
    deadline_minutes: float = Field(
        60.0, gt=0, description="no commitment report this long after sending → a warning in status"
    )
    wait_seconds: float = Field(
        10.0, ge=0, description="wait this long for the report on the requesting association before releasing it"
    )


# -- audit trail -------------------------------------------------------------------------------------
class AuditSettings(_Strict):
    patient_ids: Literal["omit", "hash", "include"] = Field(
        "omit", description="Patient IDs in audit entries: left out, as a keyed hash, or in clear"
    )


# -- metrics -----------------------------------------------------------------------------------------
class MetricsSettings(_Strict):
    enabled: bool = True
    bind: str = Field("127.0.0.1", description="address the Prometheus endpoint listens on")
    port: Port = 9104


# -- alerts ------------------------------------------------------------------------------------------
class AlertThresholds(_Strict):
    """Each threshold may be null to switch that alert off."""

    backlog_age_minutes: float | None = Field(30.0, gt=0, description="oldest unsent job of a destination")
    failure_rate_percent: float | None = Field(
        20.0, gt=0, le=100, description="failed attempts ÷ attempts to a destination over failure_window_minutes"
    )
    failure_window_minutes: float = Field(15.0, gt=0)
    failure_min_attempts: int = Field(10, ge=1, description="no failure-rate alert on fewer attempts than this")
    disk_use_percent: float | None = Field(
        None, gt=0, le=100, description="spool disk use; unset = router.disk_warn_percent"
    )
    service_restarts: int | None = Field(3, ge=1, description="unexpected restarts of one process within an hour")
    cert_expiry_days: int | None = Field(30, ge=1, description="a certificate under tls_dir expires within this")


class SyslogTarget(_Strict):
    enabled: bool = True
    address: str = Field(
        "/dev/log", description="unix socket path (/…), or host[:port] for RFC 5424 over UDP (port 514 by default)"
    )
    facility: Literal["user", "daemon", "auth", "authpriv", "local0", "local1", "local2", "local3", "local4",
                      "local5", "local6", "local7"] = "local0"  # fmt: skip


class SmtpTarget(_Strict):
    host: str = Field(min_length=1)
    port: Port = 25
    security: Literal["none", "starttls", "tls"] = "starttls"
    ca: Path | None = Field(None, description="CA bundle for a server certificate signed by a private CA")
    username: str | None = None
    password_file: Path | None = Field(None, description="file holding the SMTP password (mode 0600)")
    sender: str = Field(min_length=3, description="From: address")
    to: list[str] = Field(min_length=1)
    timeout_seconds: float = Field(15.0, gt=0)


class WebhookTarget(_Strict):
    url: str = Field(pattern=r"^https?://", description="POSTed a JSON document per alert")
    timeout_seconds: float = Field(10.0, gt=0)
    ca: Path | None = Field(None, description="CA bundle for an https URL signed by a private CA")
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. an Authorization header")


class AlertSettings(_Strict):
    thresholds: AlertThresholds = AlertThresholds()
    syslog: SyslogTarget = SyslogTarget()
    smtp: SmtpTarget | None = None
    webhook: WebhookTarget | None = None
    repeat_minutes: float = Field(240.0, gt=0, description="an alert still active is announced again after this long")
    max_per_hour: int = Field(30, ge=1, description="per channel; beyond it, alerts are counted and summarised")
    retry_minutes: float = Field(60.0, gt=0, description="keep retrying a failed delivery for this long")
