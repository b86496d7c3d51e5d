"""router.yaml's optional `appliance:` section: the box's own network, time sources and firewall opening,
for an appliance set up at its console (first-boot setup). Absent = those are managed elsewhere (Ansible,
the image) and `dicom-router system apply` touches nothing.

The router daemon never reads this section; `system apply` (run as root by dicom-router-system.service
whenever router.yaml changes) turns it into systemd-networkd, chrony and nftables files.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A DNS name: labels of letters, digits and hyphens (not at either end), dot-separated.
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
# systemd-networkd `Name=` patterns: interface names and shell globs, space-separated.
_IFACE_RE = re.compile(r"^[A-Za-z0-9_.:*?\[\]-]+( [A-Za-z0-9_.:*?\[\]-]+)*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _address(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address ({what}, e.g. 10.1.2.1)") from None


def _network(value: str) -> str:
    """An address or network the firewall can admit: 10.1.2.3, 10.1.2.0/24, fd00::/64."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address or network (e.g. 10.1.2.3 or 10.1.2.0/24)") from None


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class NetworkSettings(_Strict):
    mode: Literal["dhcp", "static"] = Field("dhcp", description="dhcp: ask the network; static: the address below")
    interfaces: str = Field(
        "en* eth*", description="which network interfaces (systemd-networkd Name= patterns, space-separated)"
    )
    address: str | None = Field(None, description="static: this appliance's address with prefix, e.g. 10.1.2.50/24")
    gateway: str | None = Field(None, description="static: the default router (gateway), e.g. 10.1.2.1")
    dns: list[str] = Field(default_factory=list, description="DNS server addresses (with DHCP: in addition)")

    @field_validator("interfaces")
    @classmethod
    def _patterns(cls, value: str) -> str:
        value = " ".join(value.split())
        if not _IFACE_RE.match(value):
            raise ValueError(f"'{value}' is not a list of interface names or patterns (e.g. 'en* eth*' or 'ens18')")
        return value

    @field_validator("address")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "/" not in value:
            raise ValueError(f"'{value}' has no prefix length: write it as address/prefix, e.g. {value}/24")
        try:
            iface = ipaddress.ip_interface(value.strip())
        except ValueError:
            raise ValueError(f"'{value}' is not an address/prefix like 10.1.2.50/24") from None
        net = iface.network
        if net.num_addresses > 2 and iface.ip in (net.network_address, net.broadcast_address):
            which = "network" if iface.ip == net.network_address else "broadcast"
            raise ValueError(f"{iface.ip} is the {which} address of {net}: give the appliance a host address")
        return str(iface)

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        return None if value is None else _address(value, "the gateway")

    @field_validator("dns")
    @classmethod
    def _dns(cls, value: list[str]) -> list[str]:
        return [_address(v, "a DNS server") for v in value]

    @model_validator(mode="after")
    def _static_needs_address(self) -> NetworkSettings:
        if self.mode == "static" and self.address is None:
            raise ValueError("a static network needs address (e.g. 10.1.2.50/24); or use mode: dhcp")
        if self.mode == "dhcp" and (self.address is not None or self.gateway is not None):
            raise ValueError("address and gateway are for mode: static; with dhcp the network assigns them")
        if self.address is not None and self.gateway is not None:
            net = ipaddress.ip_interface(self.address).network
            gw = ipaddress.ip_address(self.gateway)
            if gw.version != net.version or gw not in net:
                raise ValueError(f"the gateway {gw} is not in the appliance's network {net}: check both")
            if str(gw) == self.address.split("/")[0]:
                raise ValueError(f"the gateway {gw} is the appliance's own address")
        return self


class FirewallSettings(_Strict):
    enabled: bool = Field(
        True, description="open the router's DICOM (and TLS) ports to its source nodes' addresses and allow_from"
    )
    allow_from: list[str] = Field(
        default_factory=list, description="more addresses or networks admitted to the DICOM ports (e.g. a subnet)"
    )

    @field_validator("allow_from")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [_network(v) for v in value]


class ApplianceSettings(_Strict):
    network: NetworkSettings | None = Field(None, description="absent: the network is left as the image has it")
    ntp_servers: list[str] = Field(default_factory=list, description="empty: the image's time sources only")
    firewall: FirewallSettings = FirewallSettings()

    @field_validator("ntp_servers")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for host in value:
            host = host.strip()
            if not (is_ip_address(host) or _HOSTNAME_RE.match(host)):
                raise ValueError(f"'{host}' is not a host name or IP address (e.g. ntp1.hospital.example)")
            out.append(host)
        if len(set(out)) != len(out):
            raise ValueError("an NTP server is listed twice")
        return out


def appliance_problems(doc: dict[str, Any], add: Any) -> None:
    """The firewall can only admit addresses: with `appliance.firewall` on, a source node given by name would
    be shut out, and unknown callers would be refused by the firewall before the router could accept them."""
    appliance = doc.get("appliance")
    if not isinstance(appliance, dict):
        return
    firewall: dict[str, Any] = appliance["firewall"] if isinstance(appliance.get("firewall"), dict) else {}
    if firewall.get("enabled", True) is False:
        return
    nodes: dict[str, Any] = doc["nodes"] if isinstance(doc.get("nodes"), dict) else {}
    for name, node in nodes.items():
        if not isinstance(node, dict) or node.get("role") not in ("source", "both"):
            continue
        host = str(node.get("host", "")).strip()
        if host and not is_ip_address(host):
            add(
                ("nodes", name, "host"),
                f"'{host}' is a name, but the appliance firewall admits senders by IP address: give {name}'s "
                "address (or turn appliance.firewall off and open the port elsewhere)",
            )
    router: dict[str, Any] = doc["router"] if isinstance(doc.get("router"), dict) else {}
    if router.get("accept_unknown_callers") and not firewall.get("allow_from"):
        add(
            ("router", "accept_unknown_callers"),
            "unknown callers are accepted, but the appliance firewall only lets the source nodes in: add the "
            "senders' network to appliance.firewall.allow_from (e.g. 10.1.2.0/24)",
        )
