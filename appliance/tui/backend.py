"""The console's only door into the router: the same operations as the `dicom-router` CLI, as plain calls.

No Textual here (tests use it without a terminal), and the router package never imports this. Every call
is blocking I/O (SQLite, files, DICOM): the screens run them in thread workers. Every action that changes
something is recorded in the audit trail under `operator`, the person at the console.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.util import load_yaml_guess_indent

from appliance.router import backup as backup_mod
from appliance.router import backup_restore, operations
from appliance.router import bundle_crypto as bc
from appliance.router.clock import ClockState, clock_state
from appliance.router.commitment import describe_failure
from appliance.router.config import (
    ConfigError,
    Node,
    RouterConfig,
    _trust_problems,  # config check's TLS/commitment rule, applied to the node being typed
    load_config,
    load_state_locations,
)
from appliance.router.config_appliance import is_ip_address
from appliance.router.config_setup import SetupAnswers
from appliance.router.config_setup import problems as setup_problems
from appliance.router.config_setup import render as render_setup
from appliance.router.config_trust import CommitmentPolicy
from appliance.router.dicom_status import describe
from appliance.router.history import (
    ApplyError,
    ApplyResult,
    ChangeRequest,
    History,
    Version,
    apply_config,
    live_state,
    unified_diff,
)
from appliance.router.operations import OperationError, Outcome
from appliance.router.rules import environment_problems
from appliance.router.rules_dryrun import DryRun, dicom_files, dry_run, render
from appliance.router.scu import EchoResult, Peer, echo
from appliance.router.status import collect, short_age
from appliance.router.store import AWAITING_COMMITMENT, DestinationStats, Job, JobFilter, Store

from .problems import console_problems, first_refusals

PAGE_SIZE = 100
COUNT_CAP = 10_000  # the queue screen's total stops here for filters on study/accession/patient/age (speed)
NODE_FIELDS = ("ae_title", "host", "port", "role", "max_associations", "environment")
# Form fields kept in a node's nested settings: field → (section, key). Only these keys of `tls:` and
# `commitment:` are edited at the console; the others (CA bundle, mutual, wait_seconds) stay as the file has them.
NESTED_NODE_FIELDS = {
    "tls_enabled": ("tls", "enabled"),
    "tls_peer_name": ("tls", "peer_name"),
    "commitment_enabled": ("commitment", "enabled"),
    "commitment_deadline": ("commitment", "deadline_minutes"),
}
_FIELD_OF = {path: name for name, path in NESTED_NODE_FIELDS.items()}
DEFAULT_COMMIT_DEADLINE: float = CommitmentPolicy.model_fields["deadline_minutes"].default
COMMITMENT_FAILED = "storage commitment FAILED"  # how a job's error starts when the destination did not commit it
RULES_TEST_BATCH = 100
# The setup form's fields in words, for messages that name them.
SETUP_LABELS = {
    "ae_title": "router AE title", "port": "router port", "dest_ae": "destination AE title",
    "dest_host": "destination host", "dest_port": "destination port", "dest_name": "destination name",
    "src_name": "sender name", "src_ae": "sender AE title", "src_host": "sender address",
    "net_address": "address", "net_gateway": "gateway", "net_dns": "DNS servers", "ntp_servers": "NTP servers",
    "allow_from": "senders' network", "form": "setup",
}  # fmt: skip  # files per dry-run call: progress and "stop" are checked between batches


class BackendError(Exception):
    """An operation failed; the message is meant for the person at the console."""


@dataclass
class JobQuery:
    """What the queue screen filters on (empty = every job)."""

    destination: str | None = None
    states: tuple[str, ...] = ()
    study_uid: str | None = None
    accession: str | None = None
    patient_id: str | None = None
    older_than_seconds: float | None = None
    ids: tuple[int, ...] = ()

    def to_filter(self) -> JobFilter:
        return JobFilter(
            ids=self.ids,
            destination=self.destination or None,
            states=self.states,
            study_uid=self.study_uid or None,
            accession=self.accession or None,
            patient_id=self.patient_id or None,
            older_than_seconds=self.older_than_seconds,
        )

    def is_empty(self) -> bool:
        return self.to_filter().is_empty()


@dataclass
class Page:
    jobs: list[Job]
    total: int
    after_id: int | None  # pass as `after_id` for the next page; None = this is the last page
    total_capped: bool = False  # True: more than `total` match (counting them all would be slow)


@dataclass
class JobDetail:
    job: Job
    events: list[dict[str, Any]]
    last_status_text: str | None


@dataclass
class Dashboard:
    status: dict[str, Any]
    clock: ClockState
    throughput: list[int]  # delivered per minute, last 30 minutes, oldest first
    problems: list[str] = field(default_factory=list)  # worst first, in plain words
    levels: list[str] = field(default_factory=list)  # "error" | "warning", one per problem


@dataclass
class RulesTest:
    """What `rules test` says about some files: the report in the CLI's words, and its counts."""

    text: str
    run: DryRun
    config_label: str  # "the live config (/etc/…)" or "proposed config /tmp/…"
    files: int  # files found under the paths
    stopped: bool = False  # the operator stopped it: `run` covers the first files only
    proposed: bool = False  # tested under a proposed config file, not the live one

    @property
    def tested(self) -> int:
        return len(self.run.objects)

    @property
    def refused(self) -> int:
        return sum(1 for o in self.run.objects if o.unreadable)

    @property
    def unrouted(self) -> int:
        return sum(1 for o in self.run.objects if not o.unreadable and not o.targets)

    @property
    def held(self) -> int:
        return sum(1 for o in self.run.objects if any(t.hold_reason is not None for t in o.targets))


class Backend:
    def __init__(self, config_path: Path | str, operator: str, clock: Callable[[], float] = time.time,
                 setup_base: dict[str, Any] | None = None):  # fmt: skip
        if not operator.strip():
            raise BackendError("the console needs an operator name (the login user or --operator)")
        self.config_path = Path(config_path)
        self.operator = operator
        self.clock = clock  # snapshot tests freeze it so ages and sparklines are stable
        # More `router:` settings for the first config (tests: state_dir, log_dir); {} = the appliance's paths.
        self.setup_base = dict(setup_base or {})

    # -- first-boot setup ----------------------------------------------------------------------------
    def needs_setup(self) -> bool:
        """A fresh appliance: no router.yaml yet, so the console opens the setup screen."""
        return not self.config_path.exists()

    def setup_problems(self, fields: dict[str, Any]) -> dict[str, str]:
        """Problems with the setup form, by field ('form' for the rest), under `config check`'s rules."""
        return setup_problems(SetupAnswers.from_fields(fields), self.config_path, self.setup_base)

    def setup_echo(self, fields: dict[str, Any]) -> EchoResult:
        """C-ECHO the destination being typed, as the router's AE title being typed (the same echo as the
        endpoints screen's, to an address: there is no config yet)."""
        a = SetupAnswers.from_fields(fields)
        wrong = {k: v for k, v in self.setup_problems(fields).items() if k in ("ae_title", "dest_ae", "dest_host",
                                                                              "dest_port")}  # fmt: skip
        if wrong:
            raise BackendError("not tested: " + "; ".join(f"{SETUP_LABELS[k]}: {v}" for k, v in wrong.items()))
        return echo(a.ae_title, Peer(a.dest_name, a.dest_ae, a.dest_host, int(a.dest_port)))

    def setup_save(self, fields: dict[str, Any]) -> ApplyResult:
        """The first config, through `config apply` (history and audit under the operator's name)."""
        problems = self.setup_problems(fields)
        if problems:
            raise BackendError("; ".join(f"{SETUP_LABELS.get(k, k)}: {v}" for k, v in problems.items()))
        if self.config_path.exists():
            raise BackendError(
                f"{self.config_path} appeared while you typed (Ansible or another console?): nothing was saved. "
                "Quit and start the console again to see it"
            )
        content = render_setup(SetupAnswers.from_fields(fields), self.operator, self.setup_base).encode("utf-8")
        return self.apply(content, "first-boot setup at the console")

    # -- config and state --------------------------------------------------------------------------
    def config(self) -> RouterConfig:
        """The live config; if it is invalid, just enough of it to reach the queue (nodes/routes empty)."""
        try:
            return load_config(self.config_path)
        except ConfigError:
            try:
                return load_state_locations(self.config_path)
            except ConfigError as exc:
                raise BackendError(str(exc)) from None

    def _store(self, cfg: RouterConfig | None = None) -> Store:
        cfg = cfg or self.config()
        if not cfg.db_path.exists():
            raise BackendError(f"no queue database at {cfg.db_path}: has the router ever run with this config?")
        store = Store(cfg.db_path, durable=False)
        store.init()  # brings a database from an older release up to this schema (idempotent, quick)
        return store

    # -- dashboard -----------------------------------------------------------------------------------
    def dashboard(self) -> Dashboard:
        cfg = self.config()
        store = self._store(cfg)
        try:
            now = self.clock()
            report = collect(cfg, store, now=now, config_path=self.config_path)
            throughput = store.delivered_per_minute(now, 30)
            refusals = first_refusals(store, report["destinations"])
        finally:
            store.close()
        clock = clock_state()
        ranked = console_problems(report, clock, refusals, now)
        return Dashboard(report, clock, throughput, [p.text for p in ranked], [p.level for p in ranked])

    # -- queue ---------------------------------------------------------------------------------------
    def jobs(self, query: JobQuery, after_id: int | None = None, limit: int = PAGE_SIZE) -> Page:
        store = self._store()
        try:
            flt = query.to_filter()
            rows = store.list_jobs(flt, limit=limit + 1, after_id=after_id)
            # Filters on object facts need the instances join, slow to count over 1M jobs: stop at the cap.
            slow = bool(query.study_uid or query.accession or query.patient_id or query.older_than_seconds)
            total = store.count_jobs(flt, cap=COUNT_CAP if slow else None)
        finally:
            store.close()
        more = len(rows) > limit
        rows = rows[:limit]
        capped = slow and total > COUNT_CAP
        return Page(rows, COUNT_CAP if capped else total, rows[-1].id if more and rows else None, capped)

    def job(self, job_id: int) -> JobDetail:
        store = self._store()
        try:
            job = store.get_job(job_id)
            if job is None:
                raise BackendError(f"there is no job {job_id}")
            events = store.job_events(job_id)
        finally:
            store.close()
        if job.last_status is None:
            status = None
        elif (job.last_error or "").startswith(COMMITMENT_FAILED):  # a Failure Reason, not a C-STORE status
            status = self.describe_failure_reason(job.last_status)
        else:
            status = describe(job.last_status)
        return JobDetail(job, events, status)

    def count(self, query: JobQuery) -> int:
        store = self._store()
        try:
            return store.count_jobs(query.to_filter())
        finally:
            store.close()

    def act(self, action: str, query: JobQuery, reason: str, *, allow_all: bool = False) -> Outcome:
        """retry / hold / release / cancel every job the query selects (ids or filters)."""
        cfg = self.config()
        store = self._store(cfg)
        try:
            return operations.job_action(
                cfg, store, action, query.to_filter(), self.operator, reason, allow_all=allow_all, process="console"
            )
        except OperationError as exc:
            raise BackendError(str(exc)) from None
        finally:
            store.close()

    def reroute(self, query: JobQuery, to: str, reason: str, *, allow_all: bool = False) -> Outcome:
        cfg = self._valid_config()
        store = self._store(cfg)
        try:
            return operations.reroute(
                cfg, store, query.to_filter(), to, self.operator, reason, allow_all=allow_all, process="console"
            )
        except OperationError as exc:
            raise BackendError(str(exc)) from None
        finally:
            store.close()

    def set_paused(self, destination: str, paused: bool, reason: str) -> Outcome:
        cfg = self._valid_config()
        store = self._store(cfg)
        try:
            return operations.set_paused(cfg, store, destination, paused, self.operator, reason, process="console")
        except OperationError as exc:
            raise BackendError(str(exc)) from None
        finally:
            store.close()

    def unrouted(self, limit: int = PAGE_SIZE, offset: int = 0) -> list[dict[str, Any]]:
        store = self._store()
        try:
            return store.list_unrouted(limit=limit, offset=offset)
        finally:
            store.close()

    def route_unrouted(self, instance_ids: list[int] | None, to: list[str], reason: str) -> Outcome:
        cfg = self._valid_config()
        store = self._store(cfg)
        try:
            return operations.route_unrouted(
                cfg, store, instance_ids, to, "routine", self.operator, reason, process="console"
            )
        except OperationError as exc:
            raise BackendError(str(exc)) from None
        finally:
            store.close()

    # -- evidence ------------------------------------------------------------------------------------
    def evidence(self, *, study_uid: str | None = None, destination: str | None = None, out_dir: Path | None = None,
                 max_jobs: int = 2000) -> Path:  # fmt: skip
        """Write an incident file for escalation: jobs with attempts and status codes, log and audit excerpts.
        Identifiers are UIDs and accession numbers; patient names and IDs are left out."""
        if not study_uid and not destination:
            raise BackendError("choose a study or a destination to collect evidence for")
        cfg = self.config()
        store = self._store(cfg)
        try:
            jobs = store.list_jobs(JobFilter(study_uid=study_uid, destination=destination), limit=max_jobs)
            total = store.count_jobs(JobFilter(study_uid=study_uid, destination=destination))
            events = {j.id: store.job_events(j.id) for j in jobs}
        finally:
            store.close()
        what = f"study {study_uid}" if study_uid else f"destination {destination}"
        needles = [n for n in (study_uid, destination) if n]
        now = time.time()
        lines = [
            f"DICOM router incident evidence — {what}",
            f"collected {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(now))} by {self.operator}",
            f"router {cfg.router.ae_title} on {cfg.router.bind}:{cfg.router.port}; config {self.config_path}",
            f"{total} job(s) match" + (f"; the first {len(jobs)} are listed" if total > len(jobs) else ""),
            "",
        ]
        if destination and destination in cfg.nodes:
            lines.insert(4, f"destination address: {cfg.nodes[destination].address}")
        for j in jobs:
            status = f"0x{j.last_status:04X} {describe(j.last_status)}" if j.last_status is not None else "-"
            lines += [
                f"job {j.id}: {j.state} → {j.destination}, {j.attempts} attempt(s), last status {status}",
                f"  study {j.study_uid}  accession {j.accession or '-'}  modality {j.modality or '-'}",
                f"  SOP instance {j.sop_instance_uid}  class {j.sop_class_uid}  from {j.calling_ae}",
                f"  received {_ts(j.received_at)}  last error: {j.last_error or '-'}",
            ]
            for e in events[j.id]:
                st = f" 0x{e['status']:04X}" if e["status"] is not None else ""
                who = f" by {e['actor']}" if e["actor"] else ""
                lines.append(f"    {_ts(e['at'])}  {e['event']}{who}{st}  {e['detail'] or ''}")
        lines += ["", "service log (matching lines, newest last):"]
        lines += ["  " + ln for ln in _grep_tail(cfg.router.log_dir / "router.log", needles, 200)]
        lines += ["", "audit trail (matching entries, newest last):"]
        lines += ["  " + ln for ln in _grep_tail(cfg.audit_path, needles, 100)]
        out_dir = out_dir or cfg.router.state_dir / "evidence"
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = (study_uid or destination or "x").replace("/", "_")[-40:]
        path = out_dir / f"evidence-{tag}-{time.strftime('%Y%m%dT%H%M%S', time.localtime(now))}.txt"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        operations.AuditLog(cfg.audit_path, "console").record(
            "evidence_export", operator=self.operator, subject=what, file=str(path), jobs=len(jobs)
        )
        return path

    # -- endpoints -----------------------------------------------------------------------------------
    def nodes(self) -> dict[str, Node]:
        return dict(self._valid_config().nodes)

    def routes_using(self, node: str) -> list[str]:
        return _routes_using(self._valid_config(), node)

    def echo(self, target: str) -> EchoResult:
        """C-ECHO a configured node (by name) or AE@HOST:PORT, as the router's own AE title."""
        cfg = self.config()
        try:
            peer = Peer.from_node(target, cfg.nodes[target], cfg) if target in cfg.nodes else Peer.parse(target)
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        return echo(cfg.router.ae_title, peer)

    def validate_node(self, name: str, fields: dict[str, Any], *, editing: str | None = None) -> dict[str, str]:
        """Problems with a node being typed, by field name ('name' for the node name); empty = valid."""
        problems: dict[str, str] = {}
        cfg = self._valid_config()
        if not name.strip():
            problems["name"] = "give the node a name (e.g. PACS_MAIN)"
        elif not all(c.isalnum() or c in "_-." for c in name):
            problems["name"] = "use letters, digits, _ - . only"
        elif name != editing and name in cfg.nodes:
            problems["name"] = f"a node named {name} exists already"
        try:
            node = Node.model_validate(_node_dict(fields))
        except Exception as exc:  # pydantic ValidationError: one message per field
            for err in getattr(exc, "errors", lambda: [])():
                loc = [str(p) for p in err["loc"]]
                nested = (loc[0], loc[1]) if len(loc) >= 2 else None
                key = (_FIELD_OF.get(nested) if nested else None) or (loc[0] if loc else "node")
                problems.setdefault(key, str(err["msg"]).removeprefix("Value error, "))
            if not problems:
                problems["node"] = str(exc)
            return problems
        for where, message in _trust_problems_of(cfg, name or editing or "?", fields):
            problems.setdefault(_FIELD_OF.get(where, "node"), message)
        firewall = cfg.appliance.firewall if cfg.appliance is not None else None
        if firewall is not None and firewall.enabled and node.is_source and not is_ip_address(node.host):
            problems.setdefault("host", "the appliance firewall admits senders by IP address: type its address")
        for other, n in cfg.nodes.items():
            if other not in (name, editing) and n.ae_title == node.ae_title:
                problems["ae_title"] = f"AE title {node.ae_title} is already used by {other}"
        # `config apply` refuses routes that mix test and production: say so at the field, before Save.
        nodes = {other: n for other, n in cfg.nodes.items() if other != editing}
        nodes[name or editing or "?"] = node
        crossing = [message for _, message in environment_problems(cfg.model_copy(update={"nodes": nodes}))]
        if crossing:
            more = f" (and {len(crossing) - 1} more)" if len(crossing) > 1 else ""
            problems.setdefault("environment", f"{crossing[0]}{more}")
        return problems

    def save_node(self, name: str, fields: dict[str, Any], reason: str, *, editing: str | None = None,
                  ticket: str | None = None) -> ApplyResult:  # fmt: skip
        """Add or change a node through `config apply` (history + audit, source console)."""
        problems = self.validate_node(name, fields, editing=editing)
        if problems:
            raise BackendError("; ".join(f"{k}: {v}" for k, v in problems.items()))
        if editing and editing != name and self.routes_using(editing):
            raise BackendError(
                f"{editing} is used by route(s) {', '.join(self.routes_using(editing))}: renaming it would break them"
            )
        doc, yaml = self._live_doc()
        nodes = doc.setdefault("nodes", {})
        _set_node(nodes, name, _node_dict(fields), editing, fields)
        what = f"{'change' if editing else 'add'} node {name}"
        return self._apply_doc(doc, yaml, reason or what, ticket)

    def remove_node(self, name: str, reason: str, ticket: str | None = None) -> ApplyResult:
        used = self.routes_using(name)
        if used:
            raise BackendError(f"{name} is used by route(s) {', '.join(used)}: change or remove those routes first")
        doc, yaml = self._live_doc()
        if name not in (doc.get("nodes") or {}):
            raise BackendError(f"there is no node {name}")
        del doc["nodes"][name]
        return self._apply_doc(doc, yaml, reason or f"remove node {name}", ticket)

    def _live_doc(self) -> tuple[Any, YAML]:
        yaml = YAML(typ="rt")
        yaml.preserve_quotes = True
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BackendError(f"cannot read {self.config_path}: {exc.strerror}") from None
        # Write it indented as the file is and without re-wrapping long lines, so a console change diffs as
        # just the lines it changed.
        mapping = next((len(ln) - len(ln.lstrip(" ")) for ln in text.splitlines()
                        if ln.startswith(" ") and not ln.lstrip().startswith(("-", "#"))), 2)  # fmt: skip
        _, sequence, offset = load_yaml_guess_indent(text)
        yaml.indent(mapping=mapping, sequence=sequence or mapping, offset=offset or 0)
        yaml.width = 4096
        return yaml.load(text) or {}, yaml

    def _apply_doc(self, doc: Any, yaml: YAML, reason: str, ticket: str | None) -> ApplyResult:
        buf = io.StringIO()
        yaml.dump(doc, buf)
        return self.apply(buf.getvalue().encode("utf-8"), reason, ticket=ticket)

    # -- config history ------------------------------------------------------------------------------
    def apply(self, content: bytes, reason: str, *, ticket: str | None = None, check: bool = False) -> ApplyResult:
        try:
            return apply_config(
                self.config_path, content,
                ChangeRequest(author=self.operator, reason=reason, source="console", ticket=ticket),
                check=check, label="the console's change",
            )  # fmt: skip
        except ApplyError as exc:
            raise BackendError(str(exc)) from None

    def versions(self) -> list[Version]:
        return History(self.config().history_dir).versions()

    def live(self) -> dict[str, Any]:
        state = live_state(self.config_path)
        return {
            "sha256": state.sha256,
            "version": state.version.version if state.version and not state.drifted else None,
            "drifted": state.drifted,
            "daemon_runs_live": state.daemon_runs_live,
        }

    def version_text(self, ref: int | str) -> str:
        if ref == "live":
            return self.config_path.read_text(encoding="utf-8", errors="replace")
        try:
            return History(self.config().history_dir).content(int(ref)).decode("utf-8", "replace")
        except ApplyError as exc:
            raise BackendError(str(exc)) from None

    def diff(self, v1: int | str, v2: int | str = "live") -> str:
        a, b = self.version_text(v1), self.version_text(v2)
        return unified_diff(a.encode(), b.encode(), _label(v1), _label(v2))

    def rollback(self, version: int, reason: str, ticket: str | None = None) -> ApplyResult:
        history = History(self.config().history_dir)
        try:
            target = history.get(version)
            if target.outcome != "applied":
                raise BackendError(f"version {version} was never applied ({target.outcome}); pick an applied one")
            content = history.content(version)
            return apply_config(
                self.config_path, content,
                ChangeRequest(author=self.operator, reason=reason, source="rollback", ticket=ticket,
                              rollback_of=version),
                label=f"version {version}",
            )  # fmt: skip
        except ApplyError as exc:
            raise BackendError(str(exc)) from None

    # -- backups -------------------------------------------------------------------------------------
    def _secret(self, cfg: RouterConfig, passphrase: str | None) -> bc.Secret:
        if passphrase:
            return bc.Secret.passphrase(passphrase, "the passphrase typed at the console")
        try:
            secret = backup_mod.secret_from_config(cfg)
        except bc.BundleError as exc:
            raise BackendError(str(exc)) from None
        if secret is None:
            raise BackendError("no backup.passphrase_file or backup.key_file in the config: type the passphrase")
        return secret

    def backups(self) -> list[backup_mod.BundleRef]:
        return backup_mod.list_local(self._valid_config().backup_dir)

    def backup_create(self, passphrase: str | None = None) -> backup_mod.BackupRun:
        cfg = self._valid_config()
        try:
            return backup_mod.create_and_ship(
                cfg, self.config_path, self._secret(cfg, passphrase), cfg.backup.target,
                process="console", operator=self.operator,
            )  # fmt: skip
        except (backup_mod.BackupError, bc.BundleError) as exc:
            raise BackendError(str(exc)) from None

    def _bundle_path(self, cfg: RouterConfig, name: str) -> Path:
        path = Path(name) if "/" in name else cfg.backup_dir / name
        if not path.exists():
            raise BackendError(f"no bundle {path}")
        return path

    def backup_verify(self, name: str, passphrase: str | None = None) -> backup_mod.BundleContents:
        cfg = self._valid_config()
        path = self._bundle_path(cfg, name)
        try:
            contents = backup_mod.read_bundle(path, self._secret(cfg, passphrase))
        except (backup_mod.BackupError, bc.BundleError) as exc:
            operations.AuditLog(cfg.audit_path, "console").record(
                "backup.verify", "failure", operator=self.operator, bundle=path.name, error=str(exc)
            )
            raise BackendError(str(exc)) from None
        operations.AuditLog(cfg.audit_path, "console").record(
            "backup.verify", "success", operator=self.operator, bundle=path.name
        )
        return contents

    def restore_preview(self, name: str, passphrase: str | None = None, *, config_only: bool = True
                        ) -> backup_restore.RestorePlan:  # fmt: skip
        """Decrypt, verify and plan a restore (changes nothing). Call `restore(plan)` or `plan.cleanup()`."""
        cfg = self._valid_config()
        path = self._bundle_path(cfg, name)
        try:
            return backup_restore.prepare(
                self.config_path, path, self._secret(cfg, passphrase), config_only=config_only
            )
        except (backup_mod.BackupError, bc.BundleError) as exc:
            raise BackendError(str(exc)) from None

    def restore(self, plan: backup_restore.RestorePlan) -> backup_restore.RestoreResult:
        try:
            result = backup_restore.execute(plan, self.operator)
        except (backup_mod.BackupError, bc.BundleError, ApplyError) as exc:
            raise BackendError(str(exc)) from None
        finally:
            plan.cleanup()
        return result

    # -- logs ----------------------------------------------------------------------------------------
    def log_tail(self, lines: int = 200, contains: str = "", *, ignore_case: bool = False) -> list[str]:
        path = self.config().router.log_dir / "router.log"
        return _grep_tail(path, [contains] if contains else [], lines, ignore_case=ignore_case)

    def audit_tail(self, lines: int = 200, contains: str = "", *, ignore_case: bool = False) -> list[str]:
        return _grep_tail(self.config().audit_path, [contains] if contains else [], lines, ignore_case=ignore_case)

    # -- rules test ----------------------------------------------------------------------------------
    def rules_config(self, config_file: Path | str | None = None) -> tuple[RouterConfig, str]:
        """The config a rules test runs under: the live one, or a proposed file (checked as `config check`
        would); with words saying which."""
        if config_file is None or not str(config_file).strip():
            return self._valid_config(), f"the live config ({self.config_path})"
        path = Path(str(config_file).strip()).expanduser()
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            shown = "; ".join(str(p) for p in exc.problems[:5])
            more = f" (and {len(exc.problems) - 5} more)" if len(exc.problems) > 5 else ""
            raise BackendError(
                f"the proposed config {path} has {len(exc.problems)} problem(s): {shown}{more}. Nothing was tested: "
                f"fix the file (`dicom-router config check {path}` lists every problem with its line)"
            ) from None
        return cfg, f"proposed config {path}"

    def rules_sources(self, config_file: Path | str | None = None) -> list[tuple[str, Node]]:
        """The nodes that send to the router (role source or both), by name: who a rules test can pretend
        sent the files."""
        cfg, _ = self.rules_config(config_file)
        return [(name, node) for name, node in sorted(cfg.nodes.items()) if node.is_source]

    def rules_test(
        self,
        paths: Sequence[Path | str],
        source_node: str | None = None,
        at: datetime | None = None,
        *,
        config_file: Path | str | None = None,
        progress: Callable[[int, int], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> RulesTest:
        """`dicom-router rules test`: where each DICOM file under `paths` would go, as if `source_node` sent it
        at `at` (default: now), under the live config or `config_file`. Sends nothing, changes nothing.
        Blocking (a folder can hold thousands of files): `progress(done, total)` is called between batches,
        and the test ends early, marked stopped, once `stop()` is true."""
        cfg, label = self.rules_config(config_file)
        if source_node is not None and source_node not in cfg.nodes:
            known = ", ".join(name for name, node in sorted(cfg.nodes.items()) if node.is_source) or "none"
            raise BackendError(f"there is no node {source_node} in {label} (sources: {known})")
        wanted = [Path(str(p).strip()).expanduser() for p in paths if str(p).strip()]
        if not wanted:
            raise BackendError("type the path of a DICOM file, or of a folder of sample files")
        missing = [str(p) for p in wanted if not p.exists()]
        if missing:
            raise BackendError(
                f"no such file or folder: {', '.join(missing)}. Type the full path (it starts with /) of a DICOM "
                "file or of a folder of samples on this appliance"
            )
        try:
            files = list(dicom_files(wanted))
        except OSError as exc:
            raise BackendError(f"cannot list {exc.filename or wanted[0]}: {exc.strerror}") from None
        if not files:
            raise BackendError(f"no files in {', '.join(map(str, wanted))} (hidden files are skipped)")
        when = at or datetime.fromtimestamp(self.clock()).replace(second=0, microsecond=0)
        run = DryRun(source_node, None, when)
        stopped = False
        for start in range(0, len(files), RULES_TEST_BATCH):
            if stop is not None and stop():
                stopped = True
                break
            part = dry_run(cfg, files[start : start + RULES_TEST_BATCH], source_node=source_node, at=when)
            run.source_node, run.calling_ae = part.source_node, part.calling_ae
            run.objects += part.objects
            if progress is not None:
                progress(len(run.objects), len(files))
        # Paths below the folder typed (or beside the one file typed): shorter lines, same meaning.
        base = (wanted[0] if wanted[0].is_dir() else wanted[0].parent) if len(wanted) == 1 else None
        if base is not None:
            run.objects = [replace(o, path=str(Path(o.path).relative_to(base))) for o in run.objects]
        text = render(run, cfg, source_hint="choose a source")  # here the source is a field on the screen
        lines = [f"under {label}" + (f", files in {base}" if base is not None else ""), text]
        if stopped:
            lines.append(
                f"STOPPED after {len(run.objects):,} of {len(files):,} file(s): the counts above cover those only"
            )
        proposed = config_file is not None and bool(str(config_file).strip())
        return RulesTest("\n".join(lines), run, label, len(files), stopped, proposed)

    # -- internals -----------------------------------------------------------------------------------
    def _valid_config(self) -> RouterConfig:
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            raise BackendError(
                f"the live config has {len(exc.problems)} problem(s); fix it first (Config history → roll back): "
                + "; ".join(str(p) for p in exc.problems[:3])
            ) from None

    # -- queue screen (added by the queue screen's helper) -------------------------------------------
    def destination_names(self) -> list[str]:
        """Destinations in the config, sorted: what the queue screen offers for filters and re-route.
        Empty when the config cannot be read (the queue still shows; re-route then explains why not)."""
        try:
            return sorted(self.config().destinations())
        except BackendError:
            return []

    def destination_state(self, name: str) -> DestinationStats | None:
        """Circuit and pause state of one destination (None: the router has never recorded anything for it)."""
        store = self._store()
        try:
            return store.destination_stats(self.clock()).get(name)
        finally:
            store.close()

    @staticmethod
    def describe_status(code: int) -> str:
        """A DICOM status code with its meaning in words: '0x0122 (refused: the destination does not support …)'."""
        return describe(code)

    @staticmethod
    def describe_failure_reason(code: int) -> str:
        """A storage commitment Failure Reason in words: 'Failure Reason 0x0112: no such object instance (…)'."""
        return f"Failure Reason 0x{code:04X}: {describe_failure(code).rsplit(' (0x', 1)[0]}"

    # -- endpoints and backups screens (added by their helper) ---------------------------------------
    def nodes_with_routes(self) -> list[tuple[str, Node, list[str]]]:
        """Every node, by name, with the routes that use it: one read of the config (the screen's tick)."""
        cfg = self._valid_config()
        return [(name, cfg.nodes[name], _routes_using(cfg, name)) for name in sorted(cfg.nodes)]

    # The console's restore, audited like `dicom-router backup restore` (event backup.restore, with the mode
    # and outcome), under the operator's name: `restore_preview`/`restore` alone record only the config apply.
    def restore_plan(self, name: str, passphrase: str | None = None, *, config_only: bool = True
                     ) -> backup_restore.RestorePlan:  # fmt: skip
        """`restore_preview`; a bundle that cannot be opened (wrong passphrase, damaged, altered) is audited."""
        try:
            return self.restore_preview(name, passphrase, config_only=config_only)
        except BackendError as exc:
            self._audit_restore("failure", Path(name).name, config_only, error=str(exc))
            raise

    def restore_confirmed(self, plan: backup_restore.RestorePlan) -> backup_restore.RestoreResult:
        """`restore` after the operator confirmed the plan; the outcome goes into the audit trail."""
        try:
            result = self.restore(plan)
        except BackendError as exc:
            self._audit_restore("failure", plan.name, plan.config_only, error=str(exc))
            raise
        self._audit_restore(
            "success" if result.complete else "partial", plan.name, plan.config_only,
            restored=result.restored, moved_aside=result.moved_aside or None, unchanged=result.unchanged or None,
            skipped=result.skipped or None, config_outcome=result.config_outcome,
            config_version=result.config_version,
        )  # fmt: skip
        return result

    def restore_declined(self, plan: backup_restore.RestorePlan) -> None:
        """The operator read the plan and said no: drop the decrypted copy and note it, as the CLI does."""
        plan.cleanup()
        self._audit_restore("refused", plan.name, plan.config_only, error="not confirmed at the console")

    def _audit_restore(self, outcome: str, bundle: str, config_only: bool, **fields: Any) -> None:
        try:
            cfg = self.config()
        except BackendError:
            return  # no readable config: nowhere to audit (the restore itself failed for the same reason)
        mode = "config-only" if config_only else "full"
        audit = operations.AuditLog(cfg.audit_path, "console")
        audit.record("backup.restore", outcome, operator=self.operator, bundle=bundle, mode=mode, **fields)
        audit.close()


def _routes_using(cfg: RouterConfig, node: str) -> list[str]:
    used = [r.name for r in cfg.routes if node in r.to]
    used += [r.name for r in cfg.routes if any(op.equals == node for op in r.match.operators_for("source_node"))]
    return used


def _set_node(nodes: Any, name: str, values: dict[str, Any], editing: str | None, fields: dict[str, Any]) -> None:
    """Change a node in the round-trip document in place: its position, style (flow `{…}` or block), comments
    and other keys (timeouts, retry, tls.ca, …) stay; a node field left empty goes back to its default."""
    entry = nodes.get(editing or name)
    if entry is None:
        entry = CommentedMap(values)
        if any(getattr(n, "fa", None) is not None and n.fa.flow_style() for n in nodes.values()):
            entry.fa.set_flow_style()  # a new node looks like its neighbours
        nodes[name] = entry
        return
    for key in NODE_FIELDS:
        if key in values:
            entry[key] = values[key]
        elif key in entry:
            del entry[key]
    for form_key, (section, key) in NESTED_NODE_FIELDS.items():
        if form_key not in fields:
            continue  # a caller that does not show this field leaves it as the file has it
        wanted = values.get(section, {})
        current = entry.get(section)
        if key in wanted:
            if current is None:
                entry[section] = current = CommentedMap()
            current[key] = wanted[key]
        elif current is not None and key in current:
            del current[key]
        if current is not None and not current:
            del entry[section]  # `tls: {}` says nothing: leave no empty section behind
    if editing and editing != name:
        position = list(nodes).index(editing)
        del nodes[editing]
        nodes.insert(position, name, entry)


def _node_dict(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in NODE_FIELDS:
        value = fields.get(key)
        if value is None or value == "" or (key == "environment" and value == "production"):
            continue  # the default is not written: the file keeps only what differs from it
        if key in ("port", "max_associations") and isinstance(value, str):
            value = int(value) if value.strip().isdigit() else value
        out[key] = value
    for form_key, (section, key) in NESTED_NODE_FIELDS.items():
        value = fields.get(form_key)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "" or value is False:
            continue
        if form_key == "commitment_deadline":
            value = _number(value)
            if value == DEFAULT_COMMIT_DEADLINE:
                continue
        out.setdefault(section, {})[key] = value
    return out


def _number(text: Any) -> Any:
    """'90' → 90, '7.5' → 7.5; anything else unchanged, so validation names it."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        return text
    return int(number) if number.is_integer() else number


def _trust_problems_of(cfg: RouterConfig, name: str, fields: dict[str, Any]) -> list[tuple[tuple[str, str], str]]:
    """TLS and storage commitment settings that contradict the rest of the config (a TLS source needs the
    router's TLS listener; commitment is asked of destinations): config check's own rule, for this node."""
    found: list[tuple[tuple[str, str], str]] = []
    router = {"port": cfg.router.port, "tls": {"port": cfg.router.tls.port, "plain": cfg.router.tls.plain}}
    node = _node_dict(fields)

    def add(loc: tuple[Any, ...], message: str) -> None:
        if len(loc) == 4 and loc[:2] == ("nodes", name):
            found.append(((str(loc[2]), str(loc[3])), message))

    _trust_problems(router, {name: node}, {name: node.get("role")}, add)
    return found


def _label(ref: int | str) -> str:
    return "live" if ref == "live" else f"version {ref}"


def _ts(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _grep_tail(
    path: Path, needles: list[str], limit: int, max_bytes: int = 4 << 20, *, ignore_case: bool = False
) -> list[str]:
    """The last `limit` lines of a (possibly huge) log that contain any of `needles` (all lines if none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes:
        lines = lines[1:]  # the first line is probably cut
    if needles and ignore_case:  # what a person types at the console ("pacs_main" finds PACS_MAIN)
        folded = [n.casefold() for n in needles]
        lines = [ln for ln in lines if any(n in ln.casefold() for n in folded)]
    elif needles:
        lines = [ln for ln in lines if any(n in ln for n in needles)]
    return [_one_line(ln) for ln in lines[-limit:]]


def _one_line(line: str) -> str:
    """JSON log lines → 'time level process: message' for people; other lines as they are."""
    try:
        rec = json.loads(line)
    except ValueError:
        return line
    if not isinstance(rec, dict):
        return line
    if "message" in rec:
        return f"{rec.get('time', '')} {rec.get('level', '')} {rec.get('process', '')}: {rec['message']}"
    return line


__all__ = [
    "AWAITING_COMMITMENT",
    "DEFAULT_COMMIT_DEADLINE",
    "Backend",
    "BackendError",
    "Dashboard",
    "JobDetail",
    "JobQuery",
    "Page",
    "RulesTest",
    "SETUP_LABELS",
    "SetupAnswers",
    "short_age",
]
