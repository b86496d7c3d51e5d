"""`dicom-router serve`: runs the receiver, the forwarder and the scheduler as child processes and keeps them up.

Why separate processes: one Python process is GIL-bound for DICOM relaying, and pynetdicom 3.0.4 SCP and
SCU associations in one process were seen to take each other's DIMSE responses
(shared/notes/dicom-relay-facts.md). The scheduler (periodic jobs: backup, spool retention, disk and
certificate checks) runs apart so a slow job never stalls receiving or sending. They coordinate only
through the queue database and the spool.

Signals: SIGTERM/SIGINT drain all (each finishes in-flight work up to `drain_seconds`); SIGHUP
validates the config first and forwards the reload only if it is valid, so a bad file never
reaches a running process. Settings a running process cannot change (listening address, AE title,
directories) make the reload a drained restart of the children instead.

`router.pid` in the state directory names the supervisor, so `config apply` can signal it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import restarts
from .config import ConfigError, RouterConfig, load_config
from .logsetup import log, setup_logging
from .metrics import MULTIPROC_ENV, prepare_multiproc_dir

LOG = logging.getLogger("router.supervisor")
CHILDREN = ("receiver", "forwarder", "scheduler")
EXIT_CANNOT_LISTEN = 3
EXIT_BAD_CONFIG = 2
# Settings a child reads only at start: a reload that changes one restarts the children.
# (tls: the listener's port, plain/TLS split and its certificate paths; a rotated certificate in the same files
# needs only a reload, which the receiver handles.)
RESTART_ONLY = ("ae_title", "bind", "port", "state_dir", "log_dir", "max_pdu", "max_associations", "tls_dir", "tls")


def _die_with_parent() -> None:
    # If the supervisor is killed (even -9), the children go too: no orphan holding the DICOM port.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Supervisor:
    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = dict.fromkeys(CHILDREN, 0)
        self.stop = threading.Event()
        self.hup = threading.Event()
        self.exit_code = 0
        self.reloaded = False  # after a reload, a child that cannot start is retried, not fatal
        self.cfg: RouterConfig | None = None
        self.next_start: dict[str, float] = {}  # child name → when to restart it after a crash
        self.child_env: dict[str, str] = dict(os.environ)

    def spawn(self, name: str) -> None:
        cmd = [sys.executable, "-m", "appliance.router", "_run", name, "--config", str(self.config_path)]
        self.procs[name] = subprocess.Popen(cmd, env=self.child_env, preexec_fn=_die_with_parent)  # noqa: PLW1509
        log(LOG, logging.INFO, f"started {name}", pid=self.procs[name].pid)

    def _prepare_metrics(self, cfg: RouterConfig) -> None:
        """Metrics on: an empty multiprocess directory, named in the children's environment before they
        import prometheus_client. Off: no directory in their environment, so their counters are no-ops."""
        self.child_env.pop(MULTIPROC_ENV, None)
        if not cfg.metrics.enabled:
            return
        try:
            self.child_env[MULTIPROC_ENV] = str(prepare_multiproc_dir(cfg.router.state_dir))
        except OSError as exc:  # metrics matter less than DICOM: route without them
            log(LOG, logging.ERROR, f"metrics disabled for this run: cannot prepare their directory: {exc}")

    def _record_restart(self, name: str, code: int) -> None:
        assert self.cfg is not None
        try:
            restarts.record_exit(restarts.record_path(self.cfg.router.state_dir), name, code)
        except OSError as exc:
            log(LOG, logging.WARNING, f"cannot record the restart of {name} for the restarts alert: {exc}")

    def run(self) -> int:
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            setup_logging("supervisor", None)
            LOG.critical(f"cannot start: {exc}")
            return EXIT_BAD_CONFIG
        setup_logging("supervisor", cfg.router.log_dir)
        self.cfg = cfg
        pid_path = cfg.supervisor_pid_path
        pid_path.parent.mkdir(parents=True, exist_ok=True)
        pid_path.write_text(f"{os.getpid()}\n")
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.hup.set())
        self._prepare_metrics(cfg)
        for name in CHILDREN:
            self.spawn(name)
        while not self.stop.wait(0.2):
            if self.hup.is_set():
                self.hup.clear()
                self._reload()
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                if code in (EXIT_CANNOT_LISTEN, EXIT_BAD_CONFIG) and not self.reloaded:
                    log(
                        LOG,
                        logging.CRITICAL,
                        f"{name} cannot run (exit {code}); stopping the router — see the message above",
                    )
                    self.exit_code = code
                    self.stop.set()
                    break
                if name not in self.next_start:
                    self.restarts[name] += 1
                    self._record_restart(name, code)
                    delay = min(30.0, 2.0 ** min(self.restarts[name], 5) / 2)
                    self.next_start[name] = time.monotonic() + delay
                    log(
                        LOG,
                        logging.ERROR,
                        f"{name} exited unexpectedly (code {code}); restarting in {delay:g} s",
                        restarts=self.restarts[name],
                    )
                elif time.monotonic() >= self.next_start[name]:
                    del self.next_start[name]
                    self.spawn(name)
        code = self._shutdown(cfg.router.drain_seconds)
        try:
            if pid_path.read_text().strip() == str(os.getpid()):
                pid_path.unlink()
        except OSError:
            pass
        return code

    def _reload(self) -> None:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log(LOG, logging.ERROR, f"SIGHUP: the new config is invalid, keeping the running one: {exc}")
            return
        old, self.cfg = self.cfg, new
        self.reloaded = True
        changed = [
            f"router.{k}" for k in RESTART_ONLY if old is not None and getattr(old.router, k) != getattr(new.router, k)
        ]
        if old is not None and old.metrics.enabled != new.metrics.enabled:
            changed.append("metrics.enabled")  # the children's environment decides it: only a restart changes it
        if changed:
            log(LOG, logging.INFO, f"SIGHUP: {', '.join(changed)} changed: restarting the children")
            self._stop_children(new.router.drain_seconds)
            self._prepare_metrics(new)  # after the stop: the old children no longer write there
            self.next_start.clear()
            for name in CHILDREN:
                self.spawn(name)
            return
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)
        log(LOG, logging.INFO, f"SIGHUP: config valid, reload passed to {', '.join(CHILDREN)}")

    def _shutdown(self, drain_seconds: float) -> int:
        self._stop_children(drain_seconds)
        log(LOG, logging.INFO, "router stopped")
        return self.exit_code

    def _stop_children(self, drain_seconds: float) -> None:
        log(LOG, logging.INFO, f"stopping: draining in-flight work for up to {drain_seconds:g} s")
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_seconds + 5
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(LOG, logging.WARNING, f"{name} did not stop in time; killing it")
                proc.kill()
                proc.wait()


def run_child(name: str, config_path: Path) -> int:
    """The body of one child process: load the config, set up its logging, serve until told to stop."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        setup_logging(name, None)
        logging.getLogger(f"router.{name}").critical(str(exc))
        return EXIT_BAD_CONFIG
    setup_logging(name, cfg.router.log_dir)
    from .metrics import recorder

    recorder()  # load prometheus_client now, not while the first object waits for its C-STORE response
    if name == "receiver":
        from .receiver import Receiver

        return Receiver(config_path, cfg).serve()
    if name == "forwarder":
        from .forwarder import Forwarder

        return Forwarder(config_path, cfg).serve()
    if name == "scheduler":
        from .scheduler import SchedulerProcess

        return SchedulerProcess(config_path, cfg).serve()
    raise SystemExit(f"unknown process {name}")
