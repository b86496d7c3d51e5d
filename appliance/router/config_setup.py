"""The first config of a fresh appliance, from the answers to the console's first-boot setup.

`render` writes router.yaml's text from the answers; `problems` checks that text with exactly the rules
`config check` uses (parse_config_for) and files each problem under the answer it came from, in words for
the person at the console. Nothing here writes a file: the console saves through `config apply`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from .config import ConfigError, parse_config_for

NODE_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DEFAULT_PORT = "104"


@dataclass
class SetupAnswers:
    """What the setup screen asks; every value as typed (text), so a wrong one can be named."""

    ae_title: str = "DICOM_ROUTER"
    port: str = DEFAULT_PORT
    net_mode: str = "dhcp"  # dhcp | static
    net_address: str = ""  # static: 10.1.2.50/24
    net_gateway: str = ""
    net_dns: str = ""  # addresses, separated by spaces or commas
    ntp_servers: str = ""  # empty: the image's time sources
    dest_name: str = "PACS"
    dest_ae: str = ""
    dest_host: str = ""
    dest_port: str = DEFAULT_PORT
    src_name: str = "MODALITY_1"
    src_ae: str = ""
    src_host: str = ""
    accept_unknown: bool = False
    allow_from: str = ""  # with accept_unknown: the senders' network, 10.1.2.0/24

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> SetupAnswers:
        known = {f.name for f in fields(cls)}
        out = cls()
        for key, value in values.items():
            if key in known:
                setattr(out, key, value if isinstance(value, bool) else str(value).strip())
        return out

    @property
    def has_source(self) -> bool:
        return bool(self.src_ae or self.src_host)


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s,;]+", text) if w]


def _number(text: str) -> Any:
    return int(text) if text.isdigit() else text  # not a number: kept, so the check names it


def document(a: SetupAnswers, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """router.yaml as plain data. `base`: more `router:` settings (tests put state_dir/log_dir there)."""
    router: dict[str, Any] = {"ae_title": a.ae_title, "port": _number(a.port), **(base or {})}
    if a.accept_unknown:
        router["accept_unknown_callers"] = True
    # The destination first, as on the form: a clash (e.g. the same AE title) is reported at the sender.
    nodes: dict[str, Any] = {a.dest_name: {"ae_title": a.dest_ae, "host": a.dest_host, "port": _number(a.dest_port),
                                           "role": "destination"}}  # fmt: skip
    if a.has_source:
        nodes[a.src_name] = {"ae_title": a.src_ae, "host": a.src_host, "port": 104, "role": "source"}
    network: dict[str, Any] = {"mode": a.net_mode}
    if a.net_mode == "static":
        network["address"] = a.net_address or None
        if a.net_gateway:
            network["gateway"] = a.net_gateway
    if a.net_dns:
        network["dns"] = _words(a.net_dns)
    firewall: dict[str, Any] = {"enabled": True}
    if a.allow_from:
        firewall["allow_from"] = _words(a.allow_from)
    appliance: dict[str, Any] = {"network": network}
    if a.ntp_servers:
        appliance["ntp_servers"] = _words(a.ntp_servers)
    appliance["firewall"] = firewall
    return {
        "router": router,
        "nodes": nodes,
        "routes": [{"name": f"everything-to-{a.dest_name}", "to": [a.dest_name]}],
        "appliance": appliance,
    }


def render(a: SetupAnswers, author: str, base: dict[str, Any] | None = None) -> str:
    import io

    yaml = YAML(typ="rt")  # keeps the keys in the order written: router, nodes, routes, appliance
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    yaml.dump(document(a, base), buf)
    head = (
        f"# First-boot setup at the appliance console by {author.splitlines()[0] if author else '?'}. "
        "Change it with the console or\n"
        "# `dicom-router config apply` (every version is kept: `dicom-router config history`).\n"
    )
    return head + buf.getvalue()


# Where a config-check problem belongs on the form: (dotted path prefix, field); the first match wins.
def _field_map(a: SetupAnswers) -> list[tuple[str, str]]:
    src, dest = f"nodes.{a.src_name}", f"nodes.{a.dest_name}"
    return [
        ("router.ae_title", "ae_title"),
        ("router.port", "port"),
        ("router.accept_unknown_callers", "allow_from"),
        (f"{src}.ae_title", "src_ae"),
        (f"{src}.host", "src_host"),
        (f"{dest}.ae_title", "dest_ae"),
        (f"{dest}.host", "dest_host"),
        (f"{dest}.port", "dest_port"),
        ("appliance.network.address", "net_address"),
        ("appliance.network.gateway", "net_gateway"),
        ("appliance.network.dns", "net_dns"),
        ("appliance.network", "net_address"),
        ("appliance.ntp_servers", "ntp_servers"),
        ("appliance.firewall.allow_from", "allow_from"),
    ]


def _friendly(message: str) -> str:
    """pydantic's type messages, in the words of the form."""
    if message.startswith("Input should be a valid integer"):
        return "a port number 1-65535 (DICOM is usually 104)"
    if message.startswith("String should have at least 1 character") or message == "this key is required":
        return "required"
    return message


def problems(a: SetupAnswers, live_path: Path, base: dict[str, Any] | None = None) -> dict[str, str]:
    """Problems by form field ('form' for the rest); empty = it can be saved."""
    found: dict[str, str] = {}
    for key, name in (("dest_name", a.dest_name), ("src_name", a.src_name)):
        if key == "src_name" and not a.has_source:
            continue
        if not NODE_NAME_RE.match(name):
            found[key] = "a name for it on this router: letters, digits, _ - . (e.g. PACS_MAIN)"
    if a.has_source and a.src_name == a.dest_name and "src_name" not in found:
        found["src_name"] = f"{a.dest_name} is the destination's name already: give the sender its own"
    if not a.has_source and not a.accept_unknown:
        found["src_ae"] = "name the device that sends the first study (AE title and address), or accept unknown callers"
    if a.has_source and not a.src_ae:
        found["src_ae"] = "required: the sender's own AE title (on the modality's DICOM settings page)"
    if a.has_source and not a.src_host:
        found["src_host"] = "required: the sender's IP address"
    if a.accept_unknown and not a.allow_from:
        found["allow_from"] = "required with unknown callers: the network they send from, e.g. 10.1.2.0/24"
    for key, hint in (("dest_ae", "required: the AE title the PACS answers to (ask the PACS team)"),
                      ("dest_host", "required: the PACS's IP address or DNS name")):  # fmt: skip
        if not getattr(a, key):
            found[key] = hint
    if a.net_mode == "static" and not a.net_address:
        found["net_address"] = "required for a static address: address/prefix, e.g. 10.1.2.50/24"
    try:
        parse_config_for(render(a, "check", base), live_path, "the setup")
    except ConfigError as exc:
        mapping = _field_map(a)
        for p in exc.problems:
            where = p.where
            field = next((f for prefix, f in mapping if where == prefix or where.startswith(prefix)), "form")
            if field.startswith("src_") and not a.has_source:
                field = "form"
            if field == "net_address" and "gateway" in p.message:
                field = "net_gateway"
            found.setdefault(field, _friendly(p.message))
    return found
