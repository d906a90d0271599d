"""What a lab is made of, kept in DIR/.lab/state.json so every later command (and `down` after
a crash) knows exactly what to touch. Written before anything is created, updated as it is."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lotdeploy import protocol
from lotdeploy.errors import LabError
from lotdeploy.fsutil import LockBusy, UnreadableFile, atomic_write, exclusive_lock, read_json

REGION_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
MAX_NODES = 60
STATE_VERSION = 1


@dataclass
class Node:
    """One lab node; `ns`/`veth` only in root mode, ports only in user mode."""

    name: str
    region: str
    address: str
    ns: str = ""
    veth: str = ""
    ssh_port: int = 22
    admin_port: int = protocol.DEFAULT_ADMIN_PORT
    tls_port: int = protocol.DEFAULT_TLS_PORT
    delay_ms: int = 0
    delay_scope: str = "all"  # "all": every packet in; "region": only from other regions
    cut: bool = False
    #: extra `lab broker` options: the broker dialect this node plays (`lab up --dialect`)
    broker_args: list[str] = field(default_factory=list)
    #: how the node's broker is installed (`lab up --profile`): systemd or docker
    profile: str = "systemd"


@dataclass
class LabState:
    """The whole lab: mode, naming prefix, network, nodes, partitions, started processes."""

    lab_id: str
    mode: str  # "root" or "user"
    nodes: list[Node]
    subnet: str = ""
    bridge: str = ""
    bridge_address: str = ""
    user: str = "root"
    partitions: list[list[str]] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid, e.g. "sshd:eu1"
    host_rules: list[list[str]] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    complete: bool = False
    #: the hand-made cluster `lab up --fixture` planted last (lotdeploy.lab.fixtures)
    fixture: str = ""
    version: int = STATE_VERSION

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise LabError(f"no node {name!r} in this lab (nodes: {known})")

    def targets(self, name: str) -> tuple[list[Node], bool]:
        """NODE or REGION -> (nodes, is_region)."""
        in_region = [n for n in self.nodes if n.region == name]
        if any(n.name == name for n in self.nodes):
            return [self.node(name)], False
        if in_region:
            return in_region, True
        names = ", ".join([n.name for n in self.nodes] + sorted(self.regions()))
        raise LabError(f"{name!r} is neither a node nor a region of this lab (known: {names})")

    def regions(self) -> set[str]:
        return {n.region for n in self.nodes}

    def shape(self) -> list[tuple[str, str]]:
        return [(n.name, n.region) for n in self.nodes]


def lab_id_for(directory: Path) -> str:
    """A short id from the lab directory's absolute path: names of namespaces and links."""
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:6]


def parse_shape(nodes: int | None, regions: str | None) -> list[tuple[str, str]]:
    """`--nodes N` -> node1..nodeN in region "lab"; `--regions eu:2,us:1` -> eu1, eu2, us1."""
    if nodes is not None and regions:
        raise LabError("give either --nodes or --regions, not both")
    if regions:
        shape: list[tuple[str, str]] = []
        seen: set[str] = set()
        for part in regions.split(","):
            name, sep, count = part.strip().partition(":")
            if not REGION_RE.match(name) or not sep or not count.isdigit() or int(count) < 1:
                raise LabError(
                    f"bad --regions item {part!r}: expected REGION:COUNT like eu:2 "
                    "(region: lower-case letter then up to 7 letters/digits)"
                )
            if name in seen:
                raise LabError(f"region {name!r} given twice in --regions")
            seen.add(name)
            shape += [(f"{name}{i}", name) for i in range(1, int(count) + 1)]
    else:
        count_n = 3 if nodes is None else nodes
        if count_n < 1:
            raise LabError("--nodes must be at least 1")
        shape = [(f"node{i}", "lab") for i in range(1, count_n + 1)]
    if len(shape) > MAX_NODES:
        raise LabError(f"a lab has at most {MAX_NODES} nodes (asked for {len(shape)})")
    return shape


#: `lab up --dialect` words -> `lab broker` options (docs/lab-broker.md, dialects).
DIALECT_WORDS = {
    "json": ["--replies", "json"],
    "text": ["--replies", "text"],
    "echo": ["--echo-request-id"],
    "no-echo": ["--no-echo-request-id"],
    "reject": ["--readd", "reject"],
    "overwrite": ["--readd", "overwrite"],
    "any-verbs": ["--verbs", "any"],
    "exact-verbs": ["--verbs", "exact"],
    "cluster-none": ["--cluster-topics", "none"],
    "cluster-seed": ["--cluster-topics", "seed"],
    "cluster-coreflux": ["--cluster-topics", "coreflux"],
    "version": ["--version-topic"],
    "no-version": ["--no-version-topic"],
    "connack-4": ["--bad-login-code", "4"],
    "connack-5": ["--bad-login-code", "5"],
    "secrets": ["--secret-store"],
    "no-secrets": ["--no-secret-store"],
    "admin-only": ["--rights", "admin-only"],
    "named-rights": ["--rights", "named"],
    "sys-closed": ["--no-sys-readable"],
    "sys-open": ["--sys-readable"],
    # not a dialect of the broker's build but of how it is set up: plain MQTT for peers
    # and clients on the node's address, beside the admin's loopback (a hand-made cluster)
    "plain-links": ["--plain-links"],
}


def parse_dialects(
    items: tuple[str, ...] | list[str], shape: list[tuple[str, str]]
) -> dict[str, list[str]]:
    """`--dialect eu2=text,no-echo,overwrite,without-USE_TLS` items -> broker options per
    node (the target may be a node or a region)."""
    out: dict[str, list[str]] = {}
    for item in items:
        target, sep, spec = item.partition("=")
        nodes = [n for n, r in shape if target in (n, r)]
        if not sep or not nodes or not spec:
            raise LabError(
                f"bad --dialect {item!r}: expected NODE=WORDS or REGION=WORDS with a node or "
                "region of the lab, e.g. eu2=text,no-echo,overwrite,without-USE_TLS"
            )
        args: list[str] = []
        missing: list[str] = []
        for word in (w.strip() for w in spec.split(",")):
            if word.startswith("without-") and len(word) > len("without-"):
                missing.append(word.removeprefix("without-"))
            elif word in DIALECT_WORDS:
                args += DIALECT_WORDS[word]
            else:
                raise LabError(
                    f"bad --dialect word {word!r}: choose from {', '.join(DIALECT_WORDS)} "
                    "or without-KEY"
                )
        if missing:
            args += ["--route-code-missing", ",".join(missing)]
        for node in nodes:
            out[node] = out.get(node, []) + args
    return out


def parse_profiles(
    items: tuple[str, ...] | list[str], shape: list[tuple[str, str]]
) -> dict[str, str]:
    """`--profile docker` (every node) and `--profile eu2=docker` (a node or a region)
    items -> the profile of each node named (the others: systemd)."""
    from lotdeploy.profiles import PROFILES

    out: dict[str, str] = {}
    for item in items:
        target, sep, profile = item.rpartition("=")
        nodes = [n for n, r in shape if target in (n, r)] if sep else [n for n, _ in shape]
        if profile not in PROFILES or (sep and not nodes):
            raise LabError(
                f"bad --profile {item!r}: expected PROFILE or NODE=PROFILE or REGION=PROFILE "
                f"with a node or region of the lab, PROFILE one of {', '.join(PROFILES)}"
            )
        out.update(dict.fromkeys(nodes, profile))
    return out


def parse_delays(items: tuple[str, ...] | list[str]) -> dict[str, int]:
    """`--delay eu=40` items -> {"eu": 40}."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, ms = item.partition("=")
        if not sep or not name or not ms.isdigit():
            raise LabError(f"bad --delay {item!r}: expected REGION=MS or NODE=MS, e.g. us=80")
        out[name] = parse_ms(ms)
    return out


def parse_ms(text: str) -> int:
    if not str(text).isdigit() or int(text) > 10_000:
        raise LabError(f"bad delay {text!r}: milliseconds from 0 to 10000")
    return int(text)


#: A lab's state names its nodes and processes: kilobytes. Nothing bigger is read.
LAB_STATE_MAX_BYTES = 16 * 1024 * 1024


def state_path(directory: Path) -> Path:
    return directory / ".lab" / "state.json"


def load(directory: Path) -> LabState | None:
    """The lab's state, None when no lab was ever started here; LabError when unreadable."""
    path = state_path(directory)
    try:
        raw = read_json(path, LAB_STATE_MAX_BYTES)
    except UnreadableFile as exc:
        if exc.missing:
            return None
        raise LabError(f"{path}: {exc.about('the lab state')}") from None
    try:
        nodes = [Node(**n) for n in raw.pop("nodes")]
        return LabState(nodes=nodes, **raw)
    except (TypeError, KeyError, AttributeError) as exc:
        raise LabError(f"lab state {path} is not from this lotdeploy version: {exc}") from None


def require(directory: Path) -> LabState:
    state = load(directory)
    if state is None:
        raise LabError(f"no lab in {directory} (start one: `lotdeploy lab up --dir {directory}`)")
    return state


def save(directory: Path, state: LabState) -> None:
    atomic_write(state_path(directory), json.dumps(asdict(state), indent=2) + "\n", mode=0o600)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One lab command at a time per lab directory (an `up` and a `down` must not interleave)."""
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(exclusive_lock(directory / ".lab" / "lock", "lab command"))
        except LockBusy:
            raise LabError(f"another lab command is running on {directory}") from None
        yield
