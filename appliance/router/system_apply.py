"""`dicom-router system apply`: router.yaml's `appliance:` section made real on the box (run as root).

Three independent steps, each rendering one file from the config:
  network   /etc/systemd/network/10-appliance.network   then `networkctl reload` + `reconfigure` the links
  ntp       /etc/chrony/sources.d/appliance.sources      then `chronyc reload sources`
  firewall  /etc/nftables.d/dicom-router.nft             checked with `nft -c -f`, then `systemctl reload nftables`
A file whose content is already right is not rewritten and nothing is run for it. A write is atomic; if the
command that activates it fails, the previous file is put back (so the next run tries again) and the step is
reported failed — the other steps still run. Every change and every failure goes into the audit trail.

Without an `appliance:` section nothing is touched: the box's settings are someone else's (Ansible, the image).
Paths and the command runner are parameters so all of it runs in tests without root.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .audit import AuditLog, current_operator, lock_path
from .config import RouterConfig
from .config_appliance import NetworkSettings, is_ip_address
from .fsutil import atomic_write_bytes
from .history import History

HEADER = "# Written by `dicom-router system apply` from {config} (appliance:). Edits here are overwritten:\n" \
    "# change router.yaml through the console or `dicom-router config apply` instead.\n"  # fmt: skip
NFT_CHAIN = "dicom_router_sources"  # declared (empty) by the nftables role's ruleset, filled by this file
COMMAND_TIMEOUT = 60.0
DICOM_PORT = 104  # the one system port (< 1024) the firewall step may open


@dataclass(frozen=True)
class Targets:
    network: Path = Path("/etc/systemd/network/10-appliance.network")
    ntp: Path = Path("/etc/chrony/sources.d/appliance.sources")
    firewall: Path = Path("/etc/nftables.d/dicom-router.nft")


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    output: str


Runner = Callable[[Sequence[str]], CommandResult]


def run_command(argv: Sequence[str]) -> CommandResult:
    """The real runner: the command's exit code and its output (stdout and stderr together)."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError:
        return CommandResult(127, f"{argv[0]} is not installed")
    except subprocess.TimeoutExpired:
        return CommandResult(124, f"no answer within {COMMAND_TIMEOUT:g} s")
    return CommandResult(out.returncode, (out.stdout + out.stderr).strip())


@dataclass
class StepResult:
    step: str  # network | ntp | firewall
    outcome: str  # changed | unchanged | removed | failed
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class StepFailed(Exception):
    """A step could not be completed; the message says what and what to check."""


# -- rendering -------------------------------------------------------------------------------------------
def render_network(net: NetworkSettings, config: str) -> str:
    lines = [HEADER.format(config=config), "[Match]", f"Name={net.interfaces}", "", "[Network]"]
    if net.mode == "dhcp":
        lines.append("DHCP=yes")
    else:
        lines.append(f"Address={net.address}")
        if net.gateway:
            lines.append(f"Gateway={net.gateway}")
    lines += [f"DNS={d}" for d in net.dns]
    return "\n".join(lines) + "\n"


def render_ntp(servers: Sequence[str], config: str) -> str | None:
    """None: no servers of our own — the file goes and the image's sources alone remain."""
    if not servers:
        return None
    return HEADER.format(config=config) + "".join(f"server {s} iburst\n" for s in servers)


def firewall_sources(cfg: RouterConfig) -> tuple[list[tuple[str, str]], list[str]]:
    """(address or network, why) to admit, and names that cannot be admitted (not addresses).

    Senders are the source nodes; destinations with storage commitment call in too, with their report."""
    assert cfg.appliance is not None
    admit: list[tuple[str, str]] = []
    skipped: list[str] = []
    for name, node in sorted(cfg.nodes.items()):
        if not (node.is_source or (node.is_destination and node.commitment.enabled)):
            continue
        if is_ip_address(node.host):
            admit.append((str(ipaddress.ip_address(node.host)), name))
        else:
            skipped.append(f"{name} ({node.host})")
    admit += [(net, "allow_from") for net in cfg.appliance.firewall.allow_from]
    return admit, skipped


def dicom_ports(cfg: RouterConfig) -> list[int]:
    tls = cfg.router.tls
    ports = [cfg.router.port] if tls.port is None or tls.plain else []
    return ports + ([tls.port] if tls.port is not None else [])


def render_firewall(cfg: RouterConfig, config: str) -> str:
    """Rules appended to the ruleset's `dicom_router_sources` chain (jumped to from input). Firewall off =
    the chain stays empty: the file must still exist, the ruleset includes it."""
    assert cfg.appliance is not None
    rules: list[str] = []
    if cfg.appliance.firewall.enabled:
        admit, _ = firewall_sources(cfg)
        ports = ", ".join(str(p) for p in dicom_ports(cfg))
        for addr, why in admit:
            family = "ip" if ipaddress.ip_network(addr, strict=False).version == 4 else "ip6"
            rules.append(f'\t\t{family} saddr {addr} tcp dport {{ {ports} }} accept comment "DICOM from {why}"')
    body = "\n".join(rules) if rules else "\t\t# appliance.firewall is off or admits nobody: nothing opened here"
    return f"{HEADER.format(config=config)}table inet filter {{\n\tchain {NFT_CHAIN} {{\n{body}\n\t}}\n}}\n"


# -- applying ----------------------------------------------------------------------------------------------
class SystemApply:
    def __init__(self, cfg: RouterConfig, config_path: Path, targets: Targets = Targets(),
                 run: Runner = run_command):  # fmt: skip
        self.cfg = cfg
        self.config_path = Path(config_path)
        self.targets = targets
        self.run = run

    def apply(self) -> list[StepResult]:
        """Every step, each on its own; [] when the config has no `appliance:` section."""
        if self.cfg.appliance is None:
            return []
        results = []
        for step, do in (("network", self._network), ("ntp", self._ntp), ("firewall", self._firewall)):
            path = getattr(self.targets, step)
            try:
                results.append(do(path))
            except StepFailed as exc:
                results.append(StepResult(step, "failed", str(path), str(exc)))
            except OSError as exc:
                results.append(StepResult(step, "failed", str(path), f"cannot write {path}: {exc.strerror or exc}"))
        self._audit(results)
        return results

    # each step: render, compare, write, activate (put the old file back if activation fails)
    def _network(self, path: Path) -> StepResult:
        assert self.cfg.appliance is not None
        net = self.cfg.appliance.network
        content = None if net is None else render_network(net, str(self.config_path))

        def activate() -> None:
            self._must(["networkctl", "reload"], "systemd-networkd did not reload the network files")
            links = self._links(net.interfaces if net is not None else "")
            if links:
                self._must(["networkctl", "reconfigure", *links], f"could not reconfigure {', '.join(links)}")

        what = "no network settings: the image's own (DHCP) applies" if net is None else _network_words(net)
        return self._replace("network", path, content, activate, what)

    def _ntp(self, path: Path) -> StepResult:
        assert self.cfg.appliance is not None
        servers = self.cfg.appliance.ntp_servers
        content = render_ntp(servers, str(self.config_path))

        def activate() -> None:
            self._must(["chronyc", "reload", "sources"], "chronyd did not reload its sources (is chrony running?)")

        what = f"time from {', '.join(servers)}" if servers else "the image's time sources only"
        return self._replace("ntp", path, content, activate, what)

    def _firewall(self, path: Path) -> StepResult:
        # router.yaml is writable by the router's user: it must not be a way to open SSH or another system port.
        system = [p for p in dicom_ports(self.cfg) if p < 1024 and p != DICOM_PORT]
        if system and self.cfg.appliance is not None and self.cfg.appliance.firewall.enabled:
            raise StepFailed(
                f"port {system[0]} is a system port other than DICOM's {DICOM_PORT}: the router's rules open only "
                "104 and ports from 1024 up; nothing was changed (open it in the nftables role if it is meant)"
            )
        content = render_firewall(self.cfg, str(self.config_path))
        admit, skipped = firewall_sources(self.cfg)

        def check(tmp: Path) -> None:
            self._must(["nft", "-c", "-f", str(tmp)], "the firewall rules did not pass `nft -c`")

        def activate() -> None:
            self._must(["systemctl", "reload", "nftables"], "nftables did not load the new rules")

        assert self.cfg.appliance is not None
        if not self.cfg.appliance.firewall.enabled:
            what = "firewall opening off: the DICOM ports are opened elsewhere (or not at all)"
        else:
            ports = ", ".join(map(str, dicom_ports(self.cfg)))
            what = f"DICOM port(s) {ports} open to {', '.join(a for a, _ in admit) or 'nobody yet'}"
            if skipped:
                what += f"; NOT to {', '.join(skipped)}: a name, not an address"
        return self._replace("firewall", path, content, activate, what, check=check)

    def _replace(self, step: str, path: Path, content: str | None, activate: Callable[[], None], what: str,
                 *, check: Callable[[Path], None] | None = None) -> StepResult:  # fmt: skip
        try:
            old: bytes | None = path.read_bytes()
        except FileNotFoundError:
            old = None
        new = None if content is None else content.encode("utf-8")
        if new == old:
            return StepResult(step, "unchanged", str(path), what)
        if new is not None and check is not None:
            tmp = path.with_name(f".{path.name}.check-{os.getpid()}")
            try:
                atomic_write_bytes(tmp, new, mode=0o644)
                check(tmp)
            finally:
                tmp.unlink(missing_ok=True)
        if new is None:
            path.unlink()
        else:
            atomic_write_bytes(path, new, mode=0o644)
        try:
            activate()
        except StepFailed as exc:
            _put_back(path, old)
            raise StepFailed(f"{exc}; the previous {path.name} was put back") from None
        return StepResult(step, "removed" if new is None else "changed", str(path), what)

    def _must(self, argv: list[str], what: str) -> None:
        res = self.run(argv)
        if res.returncode != 0:
            detail = f": {res.output.splitlines()[-1]}" if res.output.strip() else ""
            raise StepFailed(f"{what} (`{' '.join(argv)}` exited {res.returncode}{detail})")

    def _links(self, patterns: str) -> list[str]:
        """Links the network file's Name= patterns match, from `networkctl list`."""
        res = self.run(["networkctl", "list", "--no-legend", "--no-pager"])
        if res.returncode != 0:
            return []
        names = [ln.split()[1] for ln in res.output.splitlines() if len(ln.split()) > 1]
        return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns.split())]

    def _audit(self, results: list[StepResult]) -> None:
        worth = [r for r in results if r.outcome != "unchanged"]
        if not worth:
            return
        version = History(self.cfg.history_dir).find_sha(self.cfg.source_sha256) if self.cfg.source_sha256 else None
        audit = AuditLog(self.cfg.audit_path, "system")
        created = [p for p in (self.cfg.audit_path, lock_path(self.cfg.audit_path)) if not p.exists()]
        for r in worth:
            audit.record(
                "system.apply", "failure" if r.outcome == "failed" else "success", operator=current_operator(),
                step=r.step, change=r.outcome, file=r.path, detail=r.message, config_sha256=self.cfg.source_sha256,
                config_version=version.version if version else None, config_author=version.author if version else None,
            )  # fmt: skip
        audit.close()
        _give_to_log_owner(self.cfg.router.log_dir, created)


def _network_words(net: NetworkSettings) -> str:
    if net.mode == "dhcp":
        base = f"DHCP on {net.interfaces}"
    else:
        base = f"static {net.address}" + (f" via {net.gateway}" if net.gateway else " (no gateway)")
    return base + (f", DNS {', '.join(net.dns)}" if net.dns else "")


def _put_back(path: Path, old: bytes | None) -> None:
    if old is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_bytes(path, old, mode=0o644)


def _give_to_log_owner(log_dir: Path, created: list[Path]) -> None:
    """Audit files this root process created belong to the router (it appends to them next), not to root."""
    if os.geteuid() != 0:
        return
    try:
        st = log_dir.stat()
    except OSError:
        return
    for path in created:
        try:
            os.chown(path, st.st_uid, st.st_gid)
        except OSError:
            pass
