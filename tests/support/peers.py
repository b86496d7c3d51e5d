"""Real DICOM peers for tests: DCMTK storescp/storescu/echoscu, Orthanc, and the router itself.

Everything listens on loopback ports chosen at start (free_port: a range of its own per pytest-xdist
worker), so tests, parallel helpers and parallel workers never collide. DCMTK and Orthanc get
TCP_NODELAY=1 (Debian's builds leave Nagle on otherwise).
Synchronisation is by polling a condition with a deadline, never by fixed sleeps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DCMTK_BIN = Path("/usr/bin")
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


# Every peer started by a test, so a fixture can stop whatever a failing test left running.
RUNNING: list[Any] = []


def stop_all() -> None:
    while RUNNING:
        peer = RUNNING.pop()
        try:
            peer.stop()
        except Exception:
            pass


# free_port() hands out ports from a range below Linux's ephemeral range (32768-60999), split between the
# pytest-xdist workers: a port it returns is bound later by another process (storescp, Orthanc, the router),
# and in between, a port the kernel picked for bind(0) could be handed to another worker's probe or be taken
# as the local port of any outgoing connection. Each worker starts at a random place in its share (another
# run of the suite on this machine uses the same shares) and walks on from there, so one process never
# returns a port twice until it has used its whole share.
_PORTS = range(10000, 32000)
_next_port: int | None = None


def _port_share() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", … in a pytest-xdist worker
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = len(_PORTS) // max(count, 1)
    return range(_PORTS.start + index * size, _PORTS.start + (index + 1) * size)


def free_port() -> int:
    global _next_port
    share = _port_share()
    if _next_port is None:
        _next_port = random.SystemRandom().randrange(len(share))  # whatever seed a test gave `random`
    for _ in range(len(share)):
        port = share[_next_port % len(share)]
        _next_port += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (or in TIME_WAIT): the next one
                continue
            return port
    raise RuntimeError(f"no free port in {share}")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    if not path.exists():
        raise RuntimeError(f"DCMTK {tool} not found at {path}: apt-get install dcmtk")
    return str(path)


class StoreSCP:
    """DCMTK storescp writing every received object to `out_dir` (accepting all transfer syntaxes)."""

    def __init__(self, workdir: Path, ae_title: str = "PACS", accept_all: bool = True, extra: Iterable[str] = ()):
        self.ae_title = ae_title
        self.out_dir = workdir / f"storescp-{ae_title}"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.accept_all = accept_all
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"storescp-{ae_title}.log"

    def start(self) -> StoreSCP:
        args = [
            dcmtk("storescp"),
            "-aet",
            self.ae_title,
            "--output-directory",
            str(self.out_dir),
            "--max-pdu",
            "131072",
            "+B",
            *self.extra,
        ]  # +B: write exactly the bytes received
        if self.accept_all:
            args.append("+xa")
        args.append(str(self.port))
        self.proc = subprocess.Popen(args, env=PEER_ENV, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        RUNNING.append(self)
        wait_until(lambda: port_open(self.port), 10, f"storescp on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def files(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())


class Orthanc:
    """Debian's Orthanc with its own storage, DICOM and HTTP ports; REST for checking what arrived."""

    def __init__(
        self,
        workdir: Path,
        ae_title: str = "ORTHANC",
        lua: str | None = None,
        modalities: dict[str, list[Any]] | None = None,
    ):
        self.ae_title = ae_title
        self.dir = workdir / f"orthanc-{ae_title}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.http_port = free_port()
        self.lua = lua
        self.modalities = modalities or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "orthanc.log"

    def start(self) -> Orthanc:
        cfg: dict[str, Any] = {
            "Name": self.ae_title,
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": self.modalities,
            "StorageCompression": False,
            "Plugins": [],
            "HttpServerEnabled": True,
            "ConcurrentJobs": 2,
        }
        if self.lua:
            lua_path = self.dir / "script.lua"
            lua_path.write_text(self.lua)
            cfg["LuaScripts"] = [str(lua_path)]
        cfg_path = self.dir / "orthanc.json"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        binary = "/usr/sbin/Orthanc"
        if not Path(binary).exists():
            raise RuntimeError("Orthanc not found at /usr/sbin/Orthanc: apt-get install orthanc")
        self.proc = subprocess.Popen(
            [binary, str(cfg_path)], env=PEER_ENV, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT
        )
        RUNNING.append(self)
        wait_until(lambda: self._http_ok(), 30, f"Orthanc HTTP on port {self.http_port}")
        wait_until(lambda: port_open(self.port), 10, f"Orthanc DICOM on port {self.port}")
        return self

    def _http_ok(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.log}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def sop_instance_uids(self) -> set[str]:
        uids = set()
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            uids.add(tags["SOPInstanceUID"])
        return uids

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None


def storescu(
    port: int,
    files: Iterable[Path],
    calling: str = "STORESCU",
    called: str = "DICOM_ROUTER",
    *,
    profile: bool = False,
    no_halt: bool = False,
    timeout: float = 600,
    extra: Iterable[str] = (),
) -> subprocess.CompletedProcess[str]:
    # -R: propose exactly the SOP classes of the files (storescu's fixed list lacks e.g. Segmentation).
    args = [dcmtk("storescu"), "-aet", calling, "-aec", called, "-v", "-R"]
    if profile:
        args += ["-xf", "/etc/dcmtk/storescu.cfg", "Default"]
    if no_halt:
        args.append("-nh")
    args += [*extra, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, env=PEER_ENV, capture_output=True, text=True, timeout=timeout)


class Router:
    """The router under test, started as `python -m appliance.router serve` in its own process group."""

    def __init__(
        self,
        workdir: Path,
        destinations: dict[str, dict[str, Any]],
        routes: list[dict[str, Any]] | None = None,
        sources: dict[str, str] | None = None,
        router_extra: dict[str, Any] | None = None,
    ):
        self.workdir = workdir
        self.port = free_port()
        self.ae_title = "DICOM_ROUTER"
        sources = sources if sources is not None else {"STORESCU": "STORESCU", "PYSCU": "PYSCU"}
        nodes: dict[str, Any] = {}
        for name, ae in sources.items():
            nodes[name] = {"ae_title": ae, "host": "127.0.0.1", "port": 104, "role": "source"}
        nodes.update(destinations)
        router = {
            "ae_title": self.ae_title,
            "bind": "127.0.0.1",
            "port": self.port,
            "state_dir": str(workdir / "state"),
            "log_dir": str(workdir / "log"),
            "drain_seconds": 5,
            **(router_extra or {}),
        }
        self.config: dict[str, Any] = {
            "router": router,
            "nodes": nodes,
            "routes": routes if routes is not None else [{"name": "all", "to": list(destinations)}],
            # Each test router's Prometheus endpoint on a port of its own: routers running side by side (and a
            # real router on this machine) would otherwise all want 9104.
            "metrics": {"port": free_port()},
        }
        self.config_path = workdir / "router.yaml"
        self.write_config()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "router.stderr"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self, wait: bool = True) -> Router:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.router", "serve", "--config", str(self.config_path)],
            cwd=REPO,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self not in RUNNING:
            RUNNING.append(self)
        if wait:
            wait_until(self._ready, 30, "router to listen and both processes to report", interval=0.1)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"router exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            st = self.status()
        except Exception:
            return False
        procs = st["processes"]
        running = all(
            procs.get(n, {}).get("running") and procs[n]["pid"] != self._stale_pids.get(n)
            for n in ("receiver", "forwarder")
        )
        # The port last, once the processes report: every probe is a connection the receiver has to handle.
        return running and port_open(self.port)

    _stale_pids: dict[str, int] = {}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "appliance.router", *args, "--config", str(self.config_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"dicom-router {' '.join(args)} exited {res.returncode}: {res.stderr}{res.stdout}")
        return res

    def read(self, *args: str) -> Any:
        """A read-only `dicom-router ARGS --json --config …` run in this process (the command's own code and
        output): the tests poll the router's state while they wait for it, and a process per poll costs ~0.5 s
        of CPU to start, taken on a busy machine from the router being waited for. The commands as processes
        are tested in tests/integration/test_queue_cli.py and the tests that call `cli`."""
        from appliance.router import cli

        out, err = io.StringIO(), io.StringIO()
        umask = os.umask(0o077)
        os.umask(umask)  # main() sets the router's umask: this process keeps its own
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code: Any = cli.main([*args, "--json", "--config", str(self.config_path)])
        except SystemExit as exc:  # e.g. no queue database yet
            code = exc.code
        finally:
            os.umask(umask)
        if code != 0:
            raise AssertionError(
                f"dicom-router {' '.join(args)} --json exited {code}: {err.getvalue()}{out.getvalue()}"
            )
        return json.loads(out.getvalue())

    def status(self) -> dict[str, Any]:
        return dict(self.read("status"))

    def jobs(self, *filters: str) -> list[dict[str, Any]]:
        return list(self.read("queue", "ls", "--limit", "100000", *filters)["jobs"])

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for d in self.status()["destinations"]:
            for k, v in d["counts"].items():
                total[k] = total.get(k, 0) + v
        return total

    def wait_delivered(self, expected_done: int, timeout: float = 120) -> None:
        wait_until(
            lambda: self.counts().get("done", 0) >= expected_done, timeout, f"{expected_done} jobs done", interval=0.2
        )

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()
        code = self.proc.returncode if self.proc else None
        self.proc = None
        return code

    def kill9(self) -> None:
        """Power-cut style: SIGKILL the whole process group (supervisor, receiver, forwarder) at once."""
        if self.proc is None:
            return
        try:
            st = self.status()
            self._stale_pids = {n: p["pid"] for n, p in st["processes"].items()}
        except Exception:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc = None

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def spool_path(self, key: str) -> Path:
        return self.workdir / "state" / "spool" / "objects" / key[:2] / f"{key}.dcm"

    def log_text(self) -> str:
        parts = []
        for p in (self.log, self.workdir / "log" / "router.log"):
            if p.exists():
                parts.append(p.read_text(errors="replace"))
        return "\n".join(parts)

    def audit(self) -> list[dict[str, Any]]:
        path = self.workdir / "log" / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dest_node(ae_title: str, port: int, **settings: Any) -> dict[str, Any]:
    """A destination node on loopback for a Router config; `settings` adds retry, circuit, … as given."""
    return {"ae_title": ae_title, "host": "127.0.0.1", "port": port, "role": "destination", **settings}
