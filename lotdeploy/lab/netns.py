"""Root mode network: a bridge, one namespace + veth per node, and per-node iptables chains for
cut, partition and delay. Rules inside a namespace vanish with it; the only host rules are two
FORWARD accepts for the bridge, tagged with the lab id so `down` finds them."""

from __future__ import annotations

import ipaddress
import json

from lotdeploy.errors import LabError
from lotdeploy.lab.labstate import LabState, Node
from lotdeploy.lab.run import run, try_run

DEFAULT_POOL = "198.18.0.0/15"
NODE_HOST_OFFSET = 11  # first node gets .11, the bridge (the host side) .1
IPT = ["iptables", "-w", "10"]
CHAINS = ("LAB-CUT", "LAB-PART", "LAB-DELAY")
# The RSTs and ICMP errors our REJECT rules send must leave the node, or peers would wait
# for a timeout instead of failing fast; so they pass OUTPUT before the cut/partition chains.
# Loopback is never cut nor delayed (a locally rejected connect's RST comes back over lo).
JUMPS = [
    ["INPUT", "!", "-i", "lo", "-j", "LAB-CUT"],
    ["INPUT", "!", "-i", "lo", "-j", "LAB-PART"],
    ["INPUT", "!", "-i", "lo", "-j", "LAB-DELAY"],
    ["OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "ACCEPT"],
    ["OUTPUT", "-p", "icmp", "--icmp-type", "destination-unreachable", "-j", "ACCEPT"],
    ["OUTPUT", "!", "-o", "lo", "-j", "LAB-CUT"],
    ["OUTPUT", "!", "-o", "lo", "-j", "LAB-PART"],
]


def ns_prefix(lab_id: str) -> str:
    return f"lotlab-{lab_id}-"


def link_prefix(lab_id: str) -> str:
    return f"ll{lab_id}"


def names_for(lab_id: str, index: int, node: str) -> tuple[str, str]:
    """(namespace, host-side veth) for node number `index`; veth names fit IFNAMSIZ (15)."""
    return f"{ns_prefix(lab_id)}{node}", f"{link_prefix(lab_id)}n{index}"


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the machine has an address or route in: the lab must avoid them."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    addr_cmd = ["ip", "-j", "-4", "addr", "show"]
    route_cmd = ["ip", "-j", "-4", "route", "show", "table", "all"]
    for cmd in (addr_cmd, route_cmd):
        try:
            data = json.loads(run(cmd, timeout=10).stdout or "[]")
        except (LabError, ValueError):
            continue
        for item in data:
            for info in item.get("addr_info", []):
                local, plen = info["local"], info["prefixlen"]
                nets.append(ipaddress.ip_network(f"{local}/{plen}", strict=False))
            dst = item.get("dst")
            if dst and dst != "default" and ":" not in dst:
                try:
                    nets.append(ipaddress.ip_network(dst, strict=False))
                except ValueError:
                    continue
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def pick_subnet(pool: str, taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /24 of `pool` that overlaps nothing the machine uses (other labs included)."""
    try:
        net = ipaddress.ip_network(pool)
    except ValueError as exc:
        raise LabError(f"bad address pool {pool!r}: {exc}") from None
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 24:
        raise LabError(f"address pool {pool} must be an IPv4 network of /24 or larger")
    for candidate in net.subnets(new_prefix=24):
        if not any(candidate.overlaps(t) for t in taken if t.prefixlen > 0):
            return candidate
    raise LabError(f"no free /24 left in the address pool {pool}")


def node_address(subnet: ipaddress.IPv4Network, index: int) -> str:
    return str(subnet.network_address + NODE_HOST_OFFSET + index - 1)


def create_bridge(state: LabState) -> None:
    """The bridge joins the nodes and gives the host an address on the lab network."""
    if not try_run(["ip", "link", "show", state.bridge]):
        run(["ip", "link", "add", state.bridge, "type", "bridge"])
    prefix = ipaddress.ip_network(state.subnet).prefixlen
    try_run(["ip", "addr", "add", f"{state.bridge_address}/{prefix}", "dev", state.bridge])
    run(["ip", "link", "set", state.bridge, "up"])
    for rule in state.host_rules:
        if not try_run([*IPT, "-C", *rule]):
            run([*IPT, "-I", *rule])


def host_rules(lab_id: str, bridge: str) -> list[list[str]]:
    """FORWARD accepts for the bridge, needed where br_netfilter and a DROP policy are active."""
    tag = ["-m", "comment", "--comment", f"lotdeploy-lab-{lab_id}", "-j", "ACCEPT"]
    return [["FORWARD", "-i", bridge, *tag], ["FORWARD", "-o", bridge, *tag]]


def create_node(state: LabState, node: Node) -> None:
    """Namespace, veth pair (eth0 inside), address, and empty cut/partition/delay chains."""
    ns, veth = node.ns, node.veth
    prefix = ipaddress.ip_network(state.subnet).prefixlen
    if not try_run(["ip", "netns", "pids", ns], node=node.name):
        run(["ip", "netns", "add", ns], node=node.name)
    nsx = ["ip", "netns", "exec", ns]
    if not try_run(["ip", "link", "show", veth]):
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p"], node=node.name)
        run(["ip", "link", "set", f"{veth}p", "netns", ns, "name", "eth0"], node=node.name)
    run(["ip", "link", "set", veth, "master", state.bridge, "up"], node=node.name)
    run([*nsx, "ip", "link", "set", "lo", "up"], node=node.name)
    try_run([*nsx, "ip", "addr", "add", f"{node.address}/{prefix}", "dev", "eth0"], node=node.name)
    run([*nsx, "ip", "link", "set", "eth0", "up"], node=node.name)
    if try_run([*nsx, *IPT, "-N", "LAB-CUT"], node=node.name):
        for chain in CHAINS[1:]:
            run([*nsx, *IPT, "-N", chain], node=node.name)
        for rule in JUMPS:
            run([*nsx, *IPT, "-A", *rule], node=node.name)


def _ipt(node: Node, *args: str) -> None:
    run(["ip", "netns", "exec", node.ns, *IPT, *args], node=node.name)


def set_cut(node: Node, cut: bool) -> None:
    """Cut: refuse all but loopback, at once (RST / ICMP), so peers fail fast, not time out."""
    _ipt(node, "-F", "LAB-CUT")
    if cut:  # the jumps to LAB-CUT already leave loopback out
        _ipt(node, "-A", "LAB-CUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
        _ipt(node, "-A", "LAB-CUT", "-j", "REJECT")


def set_partitions(state: LabState, node: Node) -> None:
    """Rebuild the node's partition chain from the lab's list of cut pairs."""
    _ipt(node, "-F", "LAB-PART")
    for a, b in state.partitions:
        if node.name not in (a, b):
            continue
        other = state.node(b if node.name == a else a)
        for flag in ("-s", "-d"):
            _ipt(
                node,
                "-A",
                "LAB-PART",
                flag,
                other.address,
                "-p",
                "tcp",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            )
            _ipt(node, "-A", "LAB-PART", flag, other.address, "-j", "REJECT")


def set_delay_rules(state: LabState, node: Node) -> None:
    """Send the node's ingress through NFQUEUE 0 (served by the delayer in its namespace).

    --queue-bypass: with no delayer listening, packets pass undelayed instead of vanishing.
    """
    _ipt(node, "-F", "LAB-DELAY")
    if node.delay_ms <= 0:
        return
    if node.delay_scope == "region":
        for peer in state.nodes:
            if peer.region == node.region and peer.name != node.name:
                _ipt(node, "-A", "LAB-DELAY", "-s", peer.address, "-j", "RETURN")
    _ipt(node, "-A", "LAB-DELAY", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass")


def _namespaces(prefix: str) -> list[str]:
    try:
        out = run(["ip", "netns", "list"], timeout=10).stdout
    except LabError:
        return []
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def existing_namespaces(lab_id: str) -> list[str]:
    return _namespaces(ns_prefix(lab_id))


def any_lab_namespaces() -> list[str]:
    """Namespaces of every lab on this machine (shared mount points stay while any exists)."""
    return _namespaces("lotlab-")


def existing_links(lab_id: str) -> list[str]:
    try:
        data = json.loads(run(["ip", "-j", "link", "show"], timeout=10).stdout or "[]")
    except (LabError, ValueError):
        return []
    return [d["ifname"] for d in data if d.get("ifname", "").startswith(link_prefix(lab_id))]


def namespace_pids(ns: str) -> list[int]:
    try:
        out = run(["ip", "netns", "pids", ns], timeout=10, check=False).stdout
    except LabError:
        return []
    return [int(p) for p in out.split() if p.isdigit()]


def delete_namespace(ns: str) -> None:
    try_run(["ip", "netns", "del", ns])


def delete_link(name: str) -> None:
    try_run(["ip", "link", "del", name])


def delete_host_rules(lab_id: str) -> None:
    """Remove every FORWARD rule tagged with this lab's id (also ones a crashed `up` added)."""
    tag = f"lotdeploy-lab-{lab_id}"
    try:
        listing = run([*IPT, "-S", "FORWARD"], timeout=10).stdout
    except LabError:
        return
    for line in listing.splitlines():
        if tag in line and line.startswith("-A "):
            args = line.split()[1:]
            args = [a.strip('"') for a in args]
            try_run([*IPT, "-D", *args])
