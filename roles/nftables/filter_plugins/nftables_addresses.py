"""Address filters for the nftables role (Python's ipaddress module; no netaddr needed).

nftables_address_problem(value, who)  -> '' when `value` is an IPv4/IPv6 address or network, else a
                                         sentence naming `who` that says what is wrong.
nftables_ip_family(value)             -> 4 or 6 (0 when `value` is not an address or network).
nftables_canonical(value)             -> the address/network in the form `nft list ruleset` prints
                                         (a single host without /32 or /128).
nftables_admits(networks, address)    -> True when `address` lies in one of `networks`.
nftables_set_elements(entries, family)
                                      -> the {address, comment} elements of a named set for IPv`family`:
                                         duplicates and entries inside another entry's network folded
                                         into it (their names join its comment), so the set needs no
                                         auto-merge and every node's name stays in the ruleset.
nftables_problems(admin_networks, monitoring_hosts, dicom_sources, ports)
                                      -> every problem of the role's inventory, as sentences ([] = fine).
"""

import ipaddress


def _network(value):
    """The ip_network for an address or CIDR string, or None. Host bits set in a CIDR are an error."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError:
        return None


def nftables_address_problem(value, who):
    if not isinstance(value, str) or not value.strip():
        return f"{who}: no address given; nftables needs an IPv4/IPv6 address or network"
    text = value.strip()
    if _network(text) is not None:
        return ""
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return (f"{who}: host '{text}' is not an IP address; nftables needs addresses "
                f"— put the address in the inventory")
    return f"{who}: '{text}' has host bits set; the network is {loose}"


def nftables_ip_family(value):
    net = _network(value)
    return net.version if net is not None else 0


def nftables_canonical(value):
    net = _network(value)
    if net is None:
        return value
    if net.num_addresses == 1:
        return str(net.network_address)
    return str(net)


def nftables_admits(networks, address):
    try:
        addr = ipaddress.ip_address(str(address).strip())
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    for item in networks or []:
        net = _network(item)
        if net is not None and net.version == addr.version and addr in net:
            return True
    return False


def nftables_set_elements(entries, family):
    nets = {}
    for entry in entries or []:
        net = _network(entry.get("address"))
        if net is None or net.version != int(family):
            continue
        nets.setdefault(net, [])
        name = str(entry.get("name") or "")
        if name and name not in nets[net]:
            nets[net].append(name)
    # Widest networks first; a network inside one already kept is folded into it.
    kept = []
    for net in sorted(nets, key=lambda n: (n.prefixlen, n.network_address)):
        outer = next((k for k in kept if net.subnet_of(k)), None)
        if outer is None:
            kept.append(net)
        else:
            nets[outer].extend(n for n in nets[net] if n not in nets[outer])
    elements = []
    for net in sorted(kept, key=lambda n: (n.network_address, n.prefixlen)):
        comment = ", ".join(nets[net]).replace('"', "'")
        if len(comment) > 120:
            comment = comment[:117] + "..."
        elements.append({"address": nftables_canonical(str(net)), "comment": comment})
    return elements


def nftables_problems(admin_networks, monitoring_hosts, dicom_sources, ports):
    problems = []
    if not admin_networks:
        problems.append("nftables_admin_networks is empty: SSH would be closed to everybody; "
                        "list the admin networks")
    for i, value in enumerate(admin_networks or [], 1):
        problems.append(nftables_address_problem(value, f"nftables_admin_networks entry {i}"))
    for i, value in enumerate(monitoring_hosts or [], 1):
        problems.append(nftables_address_problem(value, f"nftables_monitoring_hosts entry {i}"))
    for i, source in enumerate(dicom_sources or [], 1):
        if not isinstance(source, dict):
            problems.append(f"nftables_dicom_sources entry {i}: expected {{name, address}}, got {source!r}")
            continue
        name = source.get("name") or f"#{i}"
        problems.append(nftables_address_problem(source.get("address"), f"node {name}"))
    for port in ports or []:
        if port is None:
            continue
        try:
            ok = 0 < int(port) < 65536
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(f"port {port!r} is not a TCP port (1-65535)")
    return [p for p in problems if p]


class FilterModule:
    def filters(self):
        return {
            "nftables_address_problem": nftables_address_problem,
            "nftables_ip_family": nftables_ip_family,
            "nftables_canonical": nftables_canonical,
            "nftables_admits": nftables_admits,
            "nftables_problems": nftables_problems,
            "nftables_set_elements": nftables_set_elements,
        }
