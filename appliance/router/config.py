"""The router's configuration (`router.yaml`): schema, loading, and every check `config check` runs.

Errors are collected, not raised one at a time, so an operator sees every problem in one pass, each
with the YAML line it came from and what to do about it. A config with any problem is never used.
"""

from __future__ import annotations

import difflib
import enum
import fnmatch
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydicom.datadict import dictionary_VR, keyword_dict
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from .config_appliance import ApplianceSettings, appliance_problems
from .config_trust import (
    AlertSettings,
    AuditSettings,
    CommitmentPolicy,
    ListenerTls,
    MetricsSettings,
    NodeTls,
)
from .morph import MorphProfile

DEFAULT_CONFIG_PATH = Path("/etc/dicom-router/router.yaml")

# AE titles: 1-16 characters of the default character repertoire, no backslash, not all spaces.
_AE_RE = re.compile(r"^[ -\[\]-~]{1,16}$")

# Keys in a route's `match` block that are facts about the association rather than dataset tags.
ASSOCIATION_KEYS = {"calling_ae", "called_ae", "source_node"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    if not _AE_RE.match(value) or not value.strip():
        raise ValueError(
            f"'{value}' is not a valid AE title: use 1-16 printable characters, no backslash, not only spaces"
        )
    return value.strip()


AETitle = Annotated[str, Field(description="DICOM Application Entity title")]
Port = Annotated[int, Field(ge=1, le=65535)]


class Priority(enum.IntEnum):
    """Order within one destination's queue: lower goes first."""

    stat = 0
    routine = 1
    bulk = 2


class Timeouts(Strict):
    connect: float = Field(10.0, gt=0, description="TCP connect timeout, seconds")
    acse: float = Field(30.0, gt=0, description="association negotiation timeout, seconds")
    dimse: float = Field(120.0, gt=0, description="wait for a C-STORE/C-ECHO response, seconds")
    network: float = Field(60.0, gt=0, description="idle association is closed after this, seconds")


class RetryPolicy(Strict):
    base_seconds: float = Field(5.0, gt=0, description="first retry delay")
    cap_seconds: float = Field(600.0, gt=0, description="longest retry delay")
    max_attempts: int | None = Field(
        None, ge=1, description="after this many attempts a job is failed; none = keep retrying"
    )

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> RetryPolicy:
        if self.cap_seconds < self.base_seconds:
            raise ValueError(
                f"cap_seconds ({self.cap_seconds}) is below base_seconds ({self.base_seconds}): "
                "the longest delay must be at least the first"
            )
        return self


class CircuitPolicy(Strict):
    open_after_failures: int = Field(5, ge=1, description="consecutive connection failures before sending pauses")
    probe_seconds: float = Field(30.0, gt=0, description="C-ECHO probe interval while the circuit is open")


class Node(Strict):
    ae_title: str
    host: str = Field(min_length=1)
    port: Port
    role: Literal["source", "destination", "both"]
    max_associations: int = Field(2, ge=1, le=32)
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    circuit: CircuitPolicy = CircuitPolicy()
    max_pdu: int = Field(0, ge=0, description="largest PDU we accept from this peer; 0 = no limit")
    environment: Literal["production", "test"] = Field(
        "production", description="test nodes are labelled everywhere; routes may not mix environments"
    )
    morph: list[str] = Field(
        default_factory=list, description="morph profiles applied to everything sent to this node (after the route's)"
    )
    tls: NodeTls = NodeTls()
    commitment: CommitmentPolicy = Field(
        CommitmentPolicy(), description="storage commitment after sending (destinations only)"
    )

    @field_validator("ae_title")
    @classmethod
    def _valid_ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @property
    def is_source(self) -> bool:
        return self.role in ("source", "both")

    @property
    def is_destination(self) -> bool:
        return self.role in ("destination", "both")

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class MatchOp(Strict):
    """One condition on one key; exactly one operator."""

    equals: str | None = None
    glob: str | None = None
    regex: str | None = None
    present: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `Modality: CT` is shorthand for equals; a string with * or ? is a glob.
        if isinstance(value, str):
            return {"glob": value} if any(c in value for c in "*?[") else {"equals": value}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML has already turned `0123` into 123: refuse rather than silently never match "0123".
            raise ValueError(
                f"the value {value} is a number: write it in quotes (e.g. '{value}') so it is kept as written"
            )
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> MatchOp:
        given = [k for k in ("equals", "glob", "regex", "present") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of equals / glob / regex / present (got {', '.join(given) if given else 'none'})"
            )
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise ValueError(
                    f"regex '{self.regex}' does not compile: {exc} — fix the pattern (Python regex syntax, "
                    "it must match the whole value)"
                ) from exc
        return self

    def matches(self, value: str | tuple[str, ...] | None) -> bool:
        if isinstance(value, tuple):  # a path into a sequence: any item's value may match
            if self.present is not None:
                return bool(value) == self.present
            return any(self.matches(v) for v in value)
        if self.present is not None:
            return (value is not None) == self.present
        if value is None:
            return False
        if self.equals is not None:
            return value == self.equals
        if self.glob is not None:
            return fnmatch.fnmatchcase(value, self.glob)
        assert self.regex is not None
        return re.fullmatch(self.regex, value) is not None

    def describe(self) -> str:
        if self.present is not None:
            return "present" if self.present else "absent"
        if self.equals is not None:
            return f"== '{self.equals}'"
        if self.glob is not None:
            return f"matches glob '{self.glob}'"
        return f"matches regex '{self.regex}'"


class Condition(Strict):
    """A `match` block: every key test holds, every `all` member holds, at least one `any` member holds,
    and the `not` block does not hold. In YAML the key tests sit directly in the block:

        match: {Modality: CT, any: [{source_node: ct-north}, {source_node: ct-south}], not: {ImageType: '*LOCALIZER*'}}
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tests: dict[str, MatchOp] = Field(default_factory=dict)
    all_of: list[Condition] = Field(default_factory=list, alias="all")
    any_of: list[Condition] = Field(default_factory=list, alias="any")
    none_of: Condition | None = Field(None, alias="not")

    @model_validator(mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict) or "tests" in value:
            return value
        out: dict[str, Any] = {"tests": {}}
        for key, item in value.items():
            if key in ("all", "any"):
                if not isinstance(item, list) or not item:
                    raise ValueError(f"'{key}' takes a list of one or more conditions, e.g. {key}: [{{Modality: CT}}]")
                out[key] = item
            elif key == "not":
                out["not"] = item
            else:
                out["tests"][key] = item
        return out

    def is_empty(self) -> bool:
        return not (self.tests or self.all_of or self.any_of or self.none_of)

    def operators_for(self, key: str) -> list[MatchOp]:
        """Every test of `key` anywhere in this block, nested blocks included."""
        found = [op for k, op in self.tests.items() if k == key]
        for child in (*self.all_of, *self.any_of, *([self.none_of] if self.none_of else [])):
            found += child.operators_for(key)
        return found

    def tested_keys(self) -> list[str]:
        """Every key tested anywhere in this block (nested blocks included), in order, once."""
        seen: dict[str, None] = dict.fromkeys(self.tests)
        for child in (*self.all_of, *self.any_of, *([self.none_of] if self.none_of else [])):
            seen.update(dict.fromkeys(child.tested_keys()))
        return list(seen)


_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class TimeWindow(Strict):
    """When a route applies, in the appliance's local time. `between` may cross midnight (18:00-07:00);
    `days` is the calendar day at the moment the object arrives."""

    days: list[Day] | None = None
    between: str | None = None

    @field_validator("days", mode="before")
    @classmethod
    def _lowercase_days(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [str(v).lower()[:3] if isinstance(v, str) and str(v).lower()[:3] in _DAYS else v for v in value]
        return value

    @field_validator("between")
    @classmethod
    def _hh_mm_range(cls, value: str | None) -> str | None:
        if value is None:
            return value
        m = re.fullmatch(r"\s*([01]\d|2[0-3]):([0-5]\d)\s*-\s*([01]\d|2[0-3]):([0-5]\d)\s*", value)
        if not m:
            raise ValueError(f"between '{value}' is not a time range like 18:00-07:00 (24-hour HH:MM-HH:MM)")
        if m.group(1, 2) == m.group(3, 4):
            raise ValueError(f"between '{value}' starts and ends at the same minute: leave `between` out for all day")
        return f"{m.group(1)}:{m.group(2)}-{m.group(3)}:{m.group(4)}"

    @model_validator(mode="after")
    def _something(self) -> TimeWindow:
        if not self.days and self.between is None:
            raise ValueError("a time window needs days, between, or both (e.g. {days: [sat, sun]})")
        return self

    def contains(self, when: datetime) -> bool:
        if self.days and _DAYS[when.weekday()] not in self.days:
            return False
        if self.between is None:
            return True
        start, end = self.between.split("-")
        now = when.strftime("%H:%M")
        return start <= now < end if start < end else (now >= start or now < end)

    def describe(self) -> str:
        parts = [",".join(self.days)] if self.days else []
        if self.between:
            parts.append(self.between)
        return " ".join(parts)


class Route(Strict):
    name: str = Field(min_length=1)
    match: Condition = Field(default_factory=Condition)
    when: list[TimeWindow] = Field(
        default_factory=list, description="the route applies only inside one of these windows (local time)"
    )
    to: list[str] = Field(min_length=1)
    priority: Priority = Priority.routine
    action: Literal["forward", "hold"] = Field(
        "forward", description="hold = the jobs wait as held (quarantine/review) until an operator releases them"
    )
    hold_reason: str | None = Field(None, description="shown with each held job")
    forward: Literal["instance", "series", "study"] = Field(
        "instance", description="send each object at once, or wait until its series / study is complete"
    )
    morph: list[str] = Field(default_factory=list, description="morph profiles applied on the way out, in order")
    transcode: Literal["decompress", "never"] = Field(
        "decompress",
        description="if a destination refuses the object's compressed transfer syntax: decompress (lossless) or fail",
    )
    allow_environment_crossing: bool = Field(
        False, description="allow this route to carry objects between test and production nodes"
    )

    @field_validator("match", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("when", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_by_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return Priority[value]
            except KeyError:
                raise ValueError(
                    f"priority '{value}' is unknown: use one of {', '.join(p.name for p in Priority)}"
                ) from None
        return value

    def tag_keywords(self) -> list[str]:
        return [k for k in self.match.tested_keys() if k not in ASSOCIATION_KEYS]


class Retention(Strict):
    keep_sent_hours: float = Field(
        0.0, ge=0, description="keep a spooled object this long after every destination has it; 0 = delete"
    )


class SftpTarget(Strict):
    """Where off-box backup copies go. The host key must already be in `known_hosts`: never auto-accepted."""

    host: str = Field(min_length=1)
    port: Port = 22
    username: str = Field(min_length=1)
    key_file: Path = Field(description="private key for key authentication (no passwords)")
    known_hosts: Path = Field(description="known_hosts file holding the server's host key")
    remote_dir: str = Field(".", description="directory on the server for the bundles")
    timeout_seconds: float = Field(30.0, gt=0)


class BackupSettings(Strict):
    dir: Path = Field(Path("backups"), description="local bundle directory; relative = below state_dir")
    passphrase_file: Path | None = Field(None, description="file holding the passphrase the key is derived from")
    key_file: Path | None = Field(None, description="file holding a random key (instead of a passphrase)")
    schedule: str | None = Field(
        None, description="nightly backup time HH:MM (appliance local time); none = no scheduled backup"
    )
    target: Literal["local", "sftp"] = "local"
    keep_daily: int = Field(7, ge=1, description="keep the newest bundle of each of the last N days")
    keep_weekly: int = Field(4, ge=0, description="and the newest of each of the last M weeks")
    sftp: SftpTarget | None = None

    @field_validator("schedule")
    @classmethod
    def _hh_mm(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"schedule '{value}' is not a time like 02:30 (24-hour HH:MM)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BackupSettings:
        if self.passphrase_file is not None and self.key_file is not None:
            raise ValueError("set passphrase_file or key_file, not both")
        if self.target == "sftp" and self.sftp is None:
            raise ValueError("target is sftp but there is no sftp: block (host, username, key_file, known_hosts)")
        if self.schedule is not None and self.passphrase_file is None and self.key_file is None:
            raise ValueError("a scheduled backup needs passphrase_file or key_file to encrypt with")
        return self


class StudySettings(Strict):
    quiet_seconds: float = Field(
        120.0, gt=0, description="a study (or series) with no new object for this long is complete"
    )
    keep_days: float = Field(30.0, gt=0, description="forget a completed study's tracking after this many days")


class RouterSettings(Strict):
    ae_title: str = "DICOM_ROUTER"
    bind: str = "0.0.0.0"
    port: Port = 11112
    state_dir: Path = Path("/var/lib/dicom-router")
    log_dir: Path = Path("/var/log/dicom-router")
    accept_unknown_callers: bool = False
    max_pdu: int = Field(0, ge=0, description="largest PDU the router accepts; 0 = no limit")
    max_associations: int = Field(16, ge=1, le=256, description="concurrent inbound associations")
    min_free_mb: float = Field(
        512,
        ge=0,
        description="refuse new objects (0xA700) below this much free spool disk, so queued work can drain",
    )
    lease_seconds: float = Field(
        600.0, gt=0, description="a job claimed longer than this is assumed abandoned and requeued"
    )
    drain_seconds: float = Field(30.0, ge=0, description="on stop, finish in-flight work for this long")
    disk_warn_percent: float = Field(
        85.0, gt=0, le=100, description="warn (status, log, audit) when the spool disk is fuller than this"
    )
    tls_dir: Path = Field(Path("tls"), description="CA, certificates and keys; relative = next to the config file")
    tls: ListenerTls = ListenerTls()
    timeouts: Timeouts = Timeouts()
    retention: Retention = Retention()
    studies: StudySettings = StudySettings()
    on_conflict: Literal["hold", "forward"] = Field(
        "hold",
        description="a different object arriving with an already-seen SOP Instance UID: hold its jobs to "
        "destinations that have the other version, or forward anyway",
    )

    @field_validator("ae_title")
    @classmethod
    def _valid_ae(cls, value: str) -> str:
        return _check_ae_title(value)


class RouterConfig(Strict):
    router: RouterSettings = RouterSettings()
    nodes: dict[str, Node] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    morph_profiles: dict[str, MorphProfile] = Field(default_factory=dict)
    backup: BackupSettings = BackupSettings()
    audit: AuditSettings = AuditSettings()
    metrics: MetricsSettings = MetricsSettings()
    alerts: AlertSettings = AlertSettings()
    appliance: ApplianceSettings | None = Field(
        None, description="the box's network, time sources and firewall (console-set-up appliances only)"
    )
    _source_sha256: str = PrivateAttr("")

    @property
    def source_sha256(self) -> str:
        """sha256 of the file this config was loaded from ('' when built in memory)."""
        return self._source_sha256

    # -- derived views ---------------------------------------------------------------------------
    def sources_by_ae(self) -> dict[str, str]:
        return {n.ae_title: name for name, n in self.nodes.items() if n.is_source}

    def destinations(self) -> dict[str, Node]:
        return {name: n for name, n in self.nodes.items() if n.is_destination}

    def tag_keywords(self) -> list[str]:
        seen: dict[str, None] = {}
        for route in self.routes:
            for kw in route.tag_keywords():
                seen[kw] = None
        return list(seen)

    @property
    def spool_dir(self) -> Path:
        return self.router.state_dir / "spool"

    @property
    def db_path(self) -> Path:
        return self.router.state_dir / "queue.sqlite3"

    @property
    def audit_path(self) -> Path:
        return self.router.log_dir / "audit.jsonl"

    @property
    def history_dir(self) -> Path:
        return self.router.state_dir / "history"

    @property
    def backup_dir(self) -> Path:
        return self.backup.dir if self.backup.dir.is_absolute() else self.router.state_dir / self.backup.dir

    @property
    def scheduler_state_path(self) -> Path:
        return self.router.state_dir / "scheduler.json"

    @property
    def supervisor_pid_path(self) -> Path:
        return self.router.state_dir / "router.pid"

    def tls_path(self, path: Path) -> Path:
        """A certificate/key/CA path from the config: relative ones live below router.tls_dir."""
        return path if path.is_absolute() else self.router.tls_dir / path


# ---------------------------------------------------------------------------------------------------
# Loading and checking


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, phrased for the person who has to fix it."""

    where: str  # dotted path in the YAML, e.g. routes[0].to
    message: str
    line: int | None = None

    def __str__(self) -> str:
        at = f"line {self.line}: " if self.line else ""
        return f"{at}{self.where}: {self.message}" if self.where else f"{at}{self.message}"


class ConfigError(Exception):
    """Raised when a config file cannot be used; carries every problem found."""

    def __init__(self, path: Path | str, problems: list[Problem]):
        self.path = Path(path)
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{lines}")


def _line_of(doc: Any, loc: tuple[int | str, ...]) -> int | None:
    """Best-effort 1-based line of the YAML node at `loc` (ruamel keeps line/col on containers)."""
    node, line = doc, None
    for key in loc:
        lc = getattr(node, "lc", None)
        try:
            if lc is not None:
                if isinstance(key, int) and isinstance(node, list):
                    line = lc.item(key)[0] + 1
                elif isinstance(key, str) and isinstance(node, dict) and key in node:
                    line = lc.key(key)[0] + 1
            node = node[key]
        except (KeyError, IndexError, TypeError):
            break
    return line


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_FIX_HINTS = {
    "extra_forbidden": "this key is not known here: check its spelling against docs/configuration.md",
    "missing": "this key is required",
}


def _pydantic_problems(doc: Any, exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors():
        # Pydantic adds a pseudo-location for union members and validator modes; drop them.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or p == "tests")))
        msg = _FIX_HINTS.get(err["type"], err["msg"])
        if err["type"] == "value_error":
            msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] in ("greater_than_equal", "less_than_equal") and loc and loc[-1] == "port":
            msg = f"port {err.get('input')} is impossible: use 1-65535"
        problems.append(Problem(_dotted(loc), msg, _line_of(doc, loc)))
    return problems


def _semantic_problems(doc: Any) -> list[Problem]:
    """Cross-reference checks, run on the raw document so they report even when the schema failed."""
    problems: list[Problem] = []

    def add(loc: tuple[int | str, ...], msg: str) -> None:
        problems.append(Problem(_dotted(loc), msg, _line_of(doc, loc)))

    nodes = doc.get("nodes") if isinstance(doc.get("nodes"), dict) else {}
    roles = {name: n.get("role") for name, n in nodes.items() if isinstance(n, dict)}
    seen_ae: dict[str, str] = {}
    for name, node in nodes.items():
        ae = str(node.get("ae_title", "")).strip() if isinstance(node, dict) else ""
        if not ae:
            continue
        if ae in seen_ae:
            add(
                ("nodes", name, "ae_title"),
                f"AE title '{ae}' is already used by node {seen_ae[ae]}: "
                "AE titles must be unique (a peer that both sends and receives is one node with role: both)",
            )
        seen_ae.setdefault(ae, name)

    routes = doc.get("routes") if isinstance(doc.get("routes"), list) else []
    profiles = doc.get("morph_profiles") if isinstance(doc.get("morph_profiles"), dict) else {}
    names: set[str] = set()
    destinations = sorted(n for n, r in roles.items() if r in ("destination", "both"))
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        name = route.get("name")
        if name is not None and name in names:  # a missing name is reported by the schema
            add(("routes", i, "name"), f"route name '{name}' is used twice: give each route its own name")
        names.add(name)
        to: list[Any] = route["to"] if isinstance(route.get("to"), list) else []
        for j, dest in enumerate(to):
            if dest not in roles:
                known = ", ".join(destinations) or "none defined"
                add(
                    ("routes", i, "to", j),
                    f"destination '{dest}' is not a node in this file (destinations: {known})",
                )
            elif roles[dest] not in ("destination", "both"):
                add(
                    ("routes", i, "to", j),
                    f"node '{dest}' has role {roles[dest]}: a route can only send to a node with "
                    "role destination or both",
                )
        for loc, key, op in _condition_tests(route.get("match"), ("routes", i, "match")):
            if key == "source_node":
                wanted = op if isinstance(op, str) else (op.get("equals") if isinstance(op, dict) else None)
                if wanted is not None and wanted not in nodes:
                    add(loc, f"source node '{wanted}' is not a node in this file")
                continue
            if key in ASSOCIATION_KEYS:
                continue
            problem = keyword_path_problem(str(key))
            if problem:
                add(loc, problem)
        morphs: list[Any] = route["morph"] if isinstance(route.get("morph"), list) else []
        for j, name in enumerate(morphs):
            if name not in profiles:
                add(("routes", i, "morph", j), _unknown_profile(name, profiles))
    for name, node in nodes.items():
        morphs = node["morph"] if isinstance(node, dict) and isinstance(node.get("morph"), list) else []
        for j, profile in enumerate(morphs):
            if profile not in profiles:
                add(("nodes", name, "morph", j), _unknown_profile(profile, profiles))
        if morphs and roles.get(name) == "source":
            add(("nodes", name, "morph"), "morph applies to objects sent TO a node: this node has role source")
    router = doc.get("router") if isinstance(doc.get("router"), dict) else {}
    if router.get("state_dir") is not None and router.get("state_dir") == router.get("log_dir"):
        add(("router", "log_dir"), "log_dir must differ from state_dir")
    _trust_problems(router, nodes, roles, add)
    appliance_problems(doc, add)
    return problems


def _trust_problems(router: dict[str, Any], nodes: dict[str, Any], roles: dict[str, Any], add: Any) -> None:
    """TLS listener and per-node TLS / storage commitment settings that contradict each other."""
    tls: dict[str, Any] = router["tls"] if isinstance(router.get("tls"), dict) else {}
    tls_port = tls.get("port")
    plain_port = router.get("port", RouterSettings.model_fields["port"].default)
    if tls_port is not None and tls_port == plain_port:
        add(("router", "tls", "port"), f"the TLS port {tls_port} is also router.port: give TLS its own port (2762)")
    if tls.get("plain") is False and tls_port is None:
        add(("router", "tls", "plain"), "plain: false with no router.tls.port would leave the router not listening")
    for name, node in nodes.items():
        if not isinstance(node, dict):
            continue
        node_tls: dict[str, Any] = node["tls"] if isinstance(node.get("tls"), dict) else {}
        if node_tls.get("enabled") and roles.get(name) in ("source", "both") and tls_port is None:
            add(
                ("nodes", name, "tls", "enabled"),
                f"source {name} must use TLS, but the router has no TLS listener: set router.tls.port (e.g. 2762)",
            )
        commit: dict[str, Any] = node["commitment"] if isinstance(node.get("commitment"), dict) else {}
        if commit.get("enabled") and roles.get(name) == "source":
            add(
                ("nodes", name, "commitment", "enabled"),
                "storage commitment is asked of destinations: this node has role source",
            )


def _condition_tests(block: Any, loc: tuple[int | str, ...]) -> Iterator[tuple[tuple[int | str, ...], Any, Any]]:
    """(location, key, operator) of every key test in a raw `match` block, nested blocks included."""
    if not isinstance(block, dict):
        return
    for key, value in block.items():
        if key in ("all", "any") and isinstance(value, list):
            for n, child in enumerate(value):
                yield from _condition_tests(child, (*loc, key, n))
        elif key == "not":
            yield from _condition_tests(value, (*loc, key))
        else:
            yield (*loc, key), key, value


def keyword_path_problem(path: str) -> str | None:
    """Why `path` cannot be matched on: a DICOM keyword, or Sequence.Keyword paths into sequence items."""
    parts = path.split(".")
    for n, part in enumerate(parts):
        if part not in keyword_dict:
            close = difflib.get_close_matches(part, list(keyword_dict), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            if len(parts) == 1:
                return f"'{part}' is not a DICOM keyword nor one of {', '.join(sorted(ASSOCIATION_KEYS))}{hint}"
            return f"'{part}' in '{path}' is not a DICOM keyword{hint}"
        if n < len(parts) - 1 and dictionary_VR(keyword_dict[part]) != "SQ":
            return (
                f"'{part}' in '{path}' is not a sequence: only a sequence (…Sequence) can be followed by "
                "'.Keyword' to match inside its items"
            )
    return None


def _unknown_profile(name: Any, profiles: dict[str, Any]) -> str:
    known = ", ".join(sorted(profiles)) or "none defined"
    return f"morph profile '{name}' is not defined under morph_profiles (defined: {known})"


def parse_config(text: str, source: str = "<config>") -> RouterConfig:
    """Parse YAML text into a checked config, or raise ConfigError listing every problem."""
    yaml = YAML(typ="rt")
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(source, [Problem("", f"not valid YAML: {exc.problem or exc}", line)]) from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(source, [Problem("", "the file must be a mapping with router/nodes/routes", 1)])
    problems: list[Problem] = []
    cfg: RouterConfig | None = None
    try:
        cfg = RouterConfig.model_validate(_plain(doc))
    except ValidationError as exc:
        problems += _pydantic_problems(doc, exc)
    problems += _semantic_problems(doc)
    if cfg is not None and not problems:
        from .rules import environment_problems  # rules imports this module

        for loc, message in environment_problems(cfg):
            problems.append(Problem(_dotted(loc), message, _line_of(doc, loc)))
    if problems or cfg is None:
        problems.sort(key=lambda p: p.line or 0)
        raise ConfigError(source, problems)
    return cfg


def load_config(path: Path | str) -> RouterConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [Problem("", "file not found: pass --config FILE or create it")]) from None
    except OSError as exc:
        raise ConfigError(path, [Problem("", f"cannot read the file: {exc.strerror}")]) from None
    return parse_config_for(text, path, str(path))


def parse_config_for(text: str, live_path: Path, source: str) -> RouterConfig:
    """Parse `text` as if it were the file at `live_path`: relative paths resolve next to that file.
    (`config apply` and `backup restore` check a candidate that will become the live file.)"""
    cfg = _anchor_relative_dirs(parse_config(text, source), Path(live_path).resolve().parent)
    cfg._source_sha256 = config_sha256(text.encode("utf-8"))
    return cfg


def config_sha256(content: bytes) -> str:
    """The identity of a config version: sha256 of the file's bytes (what history and heartbeats record)."""
    return hashlib.sha256(content).hexdigest()


def load_state_locations(path: Path | str) -> RouterConfig:
    """Just enough of a config that fails validation to find the state: `router.state_dir` and `log_dir`.

    For read-and-queue commands at 3 a.m.: if someone saved a broken file while the router runs on its
    previous config, `status` and `queue` must still show and act on the queue. Nodes and routes are dropped.
    """
    path = Path(path)
    try:
        doc = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ConfigError(path, [Problem("", f"cannot even find router.state_dir in it: {exc}")]) from exc
    router = doc.get("router") if isinstance(doc, dict) else None
    router = router if isinstance(router, dict) else {}
    keep = {}
    for key in ("state_dir", "log_dir", "tls_dir", "ae_title", "bind", "port", "min_free_mb", "disk_warn_percent"):
        if key in router:
            try:
                RouterSettings.model_validate({key: router[key]})
            except ValidationError:
                continue
            keep[key] = router[key]
    cfg = RouterConfig(router=RouterSettings.model_validate(keep))
    return _anchor_relative_dirs(cfg, path.resolve().parent)


def _anchor_relative_dirs(cfg: RouterConfig, base: Path) -> RouterConfig:
    """Relative paths (state_dir, log_dir, tls_dir, backup key files) are taken relative to the config
    file, so every command that reads the same file finds the same state, whatever directory it runs from."""

    def anchored(model: Any, keys: tuple[str, ...]) -> dict[str, Path]:
        out = {}
        for key in keys:
            value: Path | None = getattr(model, key)
            if value is not None and not value.is_absolute():
                out[key] = (base / value).resolve()
        return out

    update: dict[str, Any] = {}
    router = anchored(cfg.router, ("state_dir", "log_dir", "tls_dir"))
    if router:
        update["router"] = cfg.router.model_copy(update=router)
    backup = anchored(cfg.backup, ("passphrase_file", "key_file"))
    if cfg.backup.sftp is not None:
        sftp = anchored(cfg.backup.sftp, ("key_file", "known_hosts"))
        if sftp:
            backup["sftp"] = cfg.backup.sftp.model_copy(update=sftp)  # type: ignore[assignment]
    if backup:
        update["backup"] = cfg.backup.model_copy(update=backup)
    alerts: dict[str, Any] = {}
    if cfg.alerts.smtp is not None and (smtp := anchored(cfg.alerts.smtp, ("password_file", "ca"))):
        alerts["smtp"] = cfg.alerts.smtp.model_copy(update=smtp)
    if cfg.alerts.webhook is not None and (webhook := anchored(cfg.alerts.webhook, ("ca",))):
        alerts["webhook"] = cfg.alerts.webhook.model_copy(update=webhook)
    if alerts:
        update["alerts"] = cfg.alerts.model_copy(update=alerts)
    if not update:
        return cfg
    return cfg.model_copy(update=update)


def _plain(node: Any) -> Any:
    """ruamel's round-trip types → plain dict/list/str so pydantic sees ordinary values."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)
    return node
