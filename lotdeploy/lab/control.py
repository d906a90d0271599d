"""What each lab command does, as plain functions (the click layer, tests and the benchmark call
these). Root mode: namespaces + bridge + iptables (see netns.py). User mode: 127.0.1.X loopback
addresses and one TCP proxy (see proxy.py)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lotdeploy import protocol
from lotdeploy.errors import LabError, LotdeployError
from lotdeploy.fsutil import UnreadableFile, atomic_write, read_marker, write_marker
from lotdeploy.lab import hosts, labstate, netns
from lotdeploy.lab.extras import require_lab_extra
from lotdeploy.lab.hosts import Layout
from lotdeploy.lab.labstate import LabState, Node
from lotdeploy.lab.proxy import BACKEND_OFFSET
from lotdeploy.lab.run import require_tools, run, try_run, which
from lotdeploy.lab.sitefile import write_site

Echo = Callable[[str], None]

ROOT_TOOLS = {
    "ip": "iproute2",
    "iptables": "iptables",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "ssh": "openssh-client",
    "mount": "mount",
}
USER_TOOLS = {"sshd": "openssh-server", "ssh-keygen": "openssh-client", "ssh": "openssh-client"}
USER_PORTS = {"ssh": 2222, "admin": 11883, "tls": 18883}
MOUNTPOINT_REGISTRY = Path("/run/lotdeploy-lab/created-mountpoints")
LAB_FILES = ("site.yaml", "known_hosts", "keys", "secrets", "nodes", "node-home", ".lab")
#: What `up` writes into the lab directory before anything else: `down` removes files only
#: where it finds it (a directory that merely looks like a lab keeps its site.yaml, keys/...).
MARKER = Path(".lab") / "marker.json"


def is_lab(lab_dir: Path) -> bool:
    """True when `lab_dir` holds a lab `up` made: its marker, or (a lab made before markers
    existed) a lab state recorded for this very directory."""
    try:
        if read_marker(lab_dir / MARKER, "lab") is not None:
            return True
    except UnreadableFile as exc:
        raise LabError(f"{lab_dir / MARKER}: {exc.reason}; refusing to touch {lab_dir}") from None
    try:
        state = labstate.load(lab_dir)
    except LabError:
        return False
    return state is not None and state.lab_id == labstate.lab_id_for(lab_dir)


def _claim(lab_dir: Path) -> None:
    """Make `lab_dir` a lab directory: a new or empty one, or a lab's; never someone's
    project directory (up would write site.yaml, keys/ and secrets/ over theirs)."""
    lab_dir.mkdir(parents=True, exist_ok=True)
    if is_lab(lab_dir):
        if not (lab_dir / MARKER).exists():
            write_marker(lab_dir / MARKER, "lab", lab_id=labstate.lab_id_for(lab_dir))
        return
    if any(lab_dir.iterdir()):
        raise LabError(
            f"{lab_dir} is not empty and holds no lab (no {MARKER}): lab up writes site.yaml, "
            "keys/ and secrets/ only into a new or empty directory"
        )
    write_marker(lab_dir / MARKER, "lab", lab_id=labstate.lab_id_for(lab_dir))


def _quiet(_msg: str) -> None:
    return None


def detect_mode(requested: str | None = None) -> str:
    """root when we are root on Linux; user otherwise (or when asked for)."""
    if requested in ("root", "user"):
        if requested == "root" and os.geteuid() != 0:
            raise LabError("root mode needs root (run as root, or use --mode user)")
        return requested
    return "root" if sys.platform.startswith("linux") and os.geteuid() == 0 else "user"


# -- up ---------------------------------------------------------------------------------------


def up(
    lab_dir: Path,
    shape: list[tuple[str, str]],
    delays: dict[str, int] | None = None,
    *,
    mode: str | None = None,
    pool: str = netns.DEFAULT_POOL,
    parallel: bool = True,
    echo: Echo = _quiet,
    dialects: dict[str, list[str]] | None = None,
    profiles: dict[str, str] | None = None,
    fixture: str | None = None,
) -> LabState:
    """Create (or confirm) the lab in `lab_dir`; write DIR/site.yaml. Idempotent.

    `dialects`: extra `lab broker` options per node name (labstate.parse_dialects).
    `profiles`: node name -> its install profile, docker or systemd (the default; root mode
    only: a docker node needs its own mount namespace for the container's paths).
    `fixture`: plant a hand-made cluster on the brokers (lotdeploy.lab.fixtures), also on a
    lab that is up already."""
    require_lab_extra()  # every node runs the lab broker
    if fixture is not None:
        dialects = _with_fixture(fixture, shape, dialects or {})
    mode = detect_mode(mode)
    profiles = {n: p for n, p in (profiles or {}).items() if p != "systemd"}
    if profiles and mode != "root":
        raise LabError(
            "the docker layout (--profile ...=docker) needs root mode: each such node sees "
            "the container's paths in its own mount namespace"
        )
    require_tools(ROOT_TOOLS if mode == "root" else USER_TOOLS)
    lab_dir = lab_dir.resolve()
    _claim(lab_dir)
    layout = Layout(lab_dir)
    with labstate.locked(lab_dir):
        existing = labstate.load(lab_dir)
        if existing is not None:
            same_dialects = all(
                n.broker_args == (dialects or {}).get(n.name, [])
                and n.profile == profiles.get(n.name, "systemd")
                for n in existing.nodes
            )
            if existing.shape() != shape or existing.mode != mode or not same_dialects:
                have = ", ".join(f"{n}({r})" for n, r in existing.shape())
                raise LabError(
                    f"a {existing.mode}-mode lab with nodes {have} already exists in {lab_dir}; "
                    f"remove it first with `lotdeploy lab down --dir {lab_dir}`"
                )
            _follow_restarts(layout, existing)
            if existing.complete and not problems(existing):
                echo(f"lab in {lab_dir} is already up ({mode} mode, {len(shape)} nodes)")
                if delays:
                    apply_delays(lab_dir, existing, delays)
                write_site(layout, existing)
                if fixture is not None:
                    _plant(layout, existing, fixture, echo)
                return existing
            echo("lab is incomplete (crashed or stopped); rebuilding it")
            _teardown(lab_dir, existing, echo=_quiet, keep_files=True)
        echo(
            f"lab mode: {mode}"
            + (
                " (network namespaces)"
                if mode == "root"
                else " (no root: loopback addresses, TCP proxy for faults)"
            )
        )
        state = _plan(lab_dir, shape, mode, pool)
        for node in state.nodes:
            node.broker_args = list((dialects or {}).get(node.name, []))
            node.profile = profiles.get(node.name, "systemd")
        labstate.save(lab_dir, state)  # before creating anything: `down` must find it all
        try:
            _prepare_files(layout, state)
            if mode == "root":
                _up_root(layout, state, parallel)
            else:
                _up_user(layout, state, parallel)
        except (LabError, OSError) as exc:
            _teardown(lab_dir, state, echo=_quiet, keep_files=True)  # logs stay in DIR/nodes
            cause = exc if isinstance(exc, LabError) else f"{exc.filename}: {exc.strerror}"
            raise LabError(f"{cause} (lab up undone; logs in {lab_dir / 'nodes'})") from None
        state.complete = True
        labstate.save(lab_dir, state)
        if delays:
            apply_delays(lab_dir, state, delays)
        write_site(layout, state)
        echo(f"lab up: {len(state.nodes)} nodes; site spec in {layout.site}")
        if fixture is not None:
            _plant(layout, state, fixture, echo)
        return state


def _with_fixture(
    name: str, shape: list[tuple[str, str]], dialects: dict[str, list[str]]
) -> dict[str, list[str]]:
    """The broker options a fixture needs on each node, before those asked for."""
    from lotdeploy.lab.fixtures import fixture_dialects

    words = fixture_dialects(name, [n for n, _ in shape])
    needed = labstate.parse_dialects([f"{n}={','.join(w)}" for n, w in words.items()], shape)
    return {n: needed.get(n, []) + dialects.get(n, []) for n in {*needed, *dialects}}


def _plant(layout: Layout, state: LabState, name: str, echo: Echo) -> None:
    from lotdeploy.lab.fixtures import plant

    try:
        plant(layout, state, name, echo)
    except (LotdeployError, OSError) as exc:  # a broker that refused: the lab stays
        raise LabError(f"fixture {name}: {exc} (the lab is up; `lab up` again retries)") from None
    state.fixture = name
    labstate.save(layout.root, state)


def _plan(lab_dir: Path, shape: list[tuple[str, str]], mode: str, pool: str) -> LabState:
    lab_id = labstate.lab_id_for(lab_dir)
    if mode == "root":
        subnet = netns.pick_subnet(pool, netns.used_networks())
        nodes = []
        for i, (name, region) in enumerate(shape, start=1):
            ns, veth = netns.names_for(lab_id, i, name)
            nodes.append(
                Node(
                    name=name,
                    region=region,
                    address=netns.node_address(subnet, i),
                    ns=ns,
                    veth=veth,
                )
            )
        bridge = f"{netns.link_prefix(lab_id)}br"
        return LabState(
            lab_id=lab_id,
            mode=mode,
            nodes=nodes,
            subnet=str(subnet),
            bridge=bridge,
            bridge_address=str(subnet.network_address + 1),
            user="root",
            host_rules=netns.host_rules(lab_id, bridge),
        )
    user = pwd.getpwuid(os.getuid()).pw_name
    addresses = _free_loopback_block(len(shape))
    nodes = [
        Node(
            name=name,
            region=region,
            address=addr,
            ssh_port=USER_PORTS["ssh"],
            admin_port=USER_PORTS["admin"],
            tls_port=USER_PORTS["tls"],
        )
        for (name, region), addr in zip(shape, addresses, strict=True)
    ]
    return LabState(lab_id=lab_id, mode=mode, nodes=nodes, user=user)


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def _free_loopback_block(count: int) -> list[str]:
    """127.0.K.11.. where every node port (front and backend) is free; K from 1 upwards."""
    ports = [p for p in USER_PORTS.values()] + [p + BACKEND_OFFSET for p in USER_PORTS.values()]
    for octet in range(1, 64):
        addresses = [f"127.0.{octet}.{11 + i}" for i in range(count)]
        if all(_bindable(a, p) for a in addresses for p in ports):
            return addresses
    raise LabError("no free block of loopback addresses with free lab ports (127.0.1-63.X)")


def _prepare_files(layout: Layout, state: LabState) -> None:
    """Keys, password, per-node directories, host keys, known_hosts and sshd configs."""
    pub = hosts.ensure_key(layout.client_key, f"lotdeploy-lab-{state.lab_id}")
    atomic_write(layout.root / "keys" / "authorized_keys", pub + "\n")
    hosts.ensure_admin_password(layout)
    host_keys: dict[str, str] = {}
    for node in state.nodes:
        for sub in (*hosts.NODE_MOUNTS, "broker"):
            layout.node_sub(node.name, sub).mkdir(parents=True, exist_ok=True)
        for outer, inner in hosts.nested_mountpoints():
            (layout.node_sub(node.name, outer) / inner).mkdir(parents=True, exist_ok=True)
        if node.profile == "docker":  # the volume's TLS directory exists, as on a real node
            (layout.node_sub(node.name, "project") / "tls").mkdir(parents=True, exist_ok=True)
        host_keys[node.name] = hosts.ensure_key(
            layout.node_sub(node.name, "ssh_host_ed25519_key"), f"lab-{node.name}", node.name
        )
        listen = node.ssh_port if state.mode == "root" else node.ssh_port + BACKEND_OFFSET
        atomic_write(
            layout.node_sub(node.name, "sshd_config"),
            hosts.sshd_config(layout, state, node, listen),
        )
    hosts.write_known_hosts(layout, state, host_keys)


def _ensure_mountpoints(targets: list[str]) -> None:
    """The node paths must exist on the host as (empty) mount points, and sshd needs its
    privilege separation directory; remember what we made so the last `down` removes it."""
    made: list[str] = []
    for target in targets:
        path = Path(target)
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for p in reversed(missing):
            p.mkdir()
            made.append(str(p))
    if made:
        MOUNTPOINT_REGISTRY.parent.mkdir(parents=True, exist_ok=True)
        with open(MOUNTPOINT_REGISTRY, "a") as fh:
            fh.write("".join(f"{p}\n" for p in made))


def _start_node_services(
    layout: Layout,
    state: LabState,
    node: Node,
    lock: threading.Lock,
    *,
    wrap: Callable[[list[str]], list[str]],
    listen: hosts.BrokerListen,
    sshd_port: int,
) -> None:
    """Start a node's sshd and lab broker, record their pids, wait until both serve."""
    name = node.name
    sshd_log = layout.node_sub(name, "sshd.log")
    sshd = [hosts.SSHD, "-D", "-e", "-f", str(layout.node_sub(name, "sshd_config"))]
    pid = hosts.spawn(wrap(sshd), sshd_log, state.lab_id)
    with lock:
        hosts.remember(state, f"sshd:{name}", pid)
        labstate.save(layout.root, state)
    _start_broker(layout, state, node, lock, wrap=wrap, listen=listen)
    hosts.wait_port(
        node.address,
        sshd_port,
        node=name,
        what="sshd",
        pid_check=(state, f"sshd:{name}"),
        log=sshd_log,
    )


def _start_broker(
    layout: Layout,
    state: LabState,
    node: Node,
    lock: threading.Lock,
    *,
    wrap: Callable[[list[str]], list[str]],
    listen: hosts.BrokerListen,
    wait: bool = True,
) -> None:
    """Start a node's lab broker (its routes, users and secrets come back from its state
    directory), record its pid (also in the node's broker.pid, for the SIGHUP reload)."""
    name = node.name
    broker_log = layout.node_sub(name, "broker.log")
    ready_from = broker_log.stat().st_size if broker_log.exists() else 0
    broker = hosts.broker_argv(layout, node, listen)
    if node.profile == "docker":  # `docker restart` starts this again, inside the node
        hosts.write_docker_cli(layout, state, node, broker)
    pid = hosts.spawn(wrap(broker), broker_log, state.lab_id, cwd=layout.node_sub(name, "broker"))
    with lock:
        hosts.remember(state, f"broker:{name}", pid)
        labstate.save(layout.root, state)
    atomic_write(layout.node_sub(name, "run") / "broker.pid", f"{pid}\n")
    if wait:
        hosts.wait_ready(broker_log, ready_from, node=name, pid_check=(state, f"broker:{name}"))


def _root_runtime(
    layout: Layout, state: LabState, node: Node, shell_files: dict[str, Path] | None = None
) -> tuple[Callable[[list[str]], list[str]], hosts.BrokerListen]:
    """How a root-mode node's processes run (in its namespace, its directories mounted) and
    where its broker listens: plain MQTT (the command channel) only on the node's own
    loopback, TLS for peers on its address."""
    binds = {what: layout.node_sub(node.name, what) for what in hosts.NODE_MOUNTS}
    docker = node.profile == "docker"  # its broker reads the TLS files inside its container
    listen = hosts.BrokerListen(
        protocol.DEFAULT_ADMIN_HOST,
        node.address,
        protocol.DEFAULT_ADMIN_PORT,
        protocol.DEFAULT_TLS_PORT,
        hosts.DOCKER_BROKER_TLS_DIR if docker else hosts.NODE_TLS_DIR,
    )
    files = {**(shell_files or {}), **hosts.docker_mounts(layout, node)}
    return (lambda argv: hosts.in_node(node.ns, binds, argv, files)), listen


def _user_runtime(
    layout: Layout, node: Node
) -> tuple[Callable[[list[str]], list[str]], hosts.BrokerListen]:
    """A user-mode node: plain processes; the real servers sit BACKEND_OFFSET above the
    ports the proxy offers."""
    listen = hosts.BrokerListen(
        node.address,
        node.address,
        node.admin_port + BACKEND_OFFSET,
        node.tls_port + BACKEND_OFFSET,
        str(layout.node_sub(node.name, "tls")),
    )
    return (lambda argv: argv), listen


def _up_root(layout: Layout, state: LabState, parallel: bool) -> None:
    lock = threading.Lock()
    docker = list(hosts.DOCKER_MOUNTS) if any(n.profile == "docker" for n in state.nodes) else []
    _ensure_mountpoints([*hosts.NODE_MOUNTS.values(), *docker, "/run/sshd"])
    netns.create_bridge(state)

    shell_files = hosts.shell_startup_mounts(layout, state.user)

    def start(node: Node) -> None:
        netns.create_node(state, node)
        wrap, listen = _root_runtime(layout, state, node, shell_files)
        _start_node_services(
            layout, state, node, lock, wrap=wrap, listen=listen, sshd_port=node.ssh_port
        )

    _for_each(state.nodes, start, parallel)


def _up_user(layout: Layout, state: LabState, parallel: bool) -> None:
    if os.geteuid() == 0:  # sshd started as root insists on its privilege separation dir
        _ensure_mountpoints(["/run/sshd"])
    lock = threading.Lock()

    def start(node: Node) -> None:
        wrap, listen = _user_runtime(layout, node)
        _start_node_services(
            layout,
            state,
            node,
            lock,
            wrap=wrap,
            listen=listen,
            sshd_port=node.ssh_port + BACKEND_OFFSET,
        )

    _for_each(state.nodes, start, parallel)
    log = layout.root / ".lab" / "proxy.log"
    pid = hosts.spawn(
        [sys.executable, "-m", "lotdeploy.lab.proxy", "--lab", str(layout.root)], log, state.lab_id
    )
    hosts.remember(state, "proxy", pid)
    labstate.save(layout.root, state)
    first = state.nodes[0]
    hosts.wait_port(
        first.address,
        first.ssh_port,
        node=first.name,
        what="lab proxy",
        pid_check=(state, "proxy"),
        log=log,
    )


def _for_each(nodes: list[Node], fn: Callable[[Node], None], parallel: bool) -> None:
    """Run fn per node, in parallel threads or one by one; the first error wins."""
    if not parallel:
        for node in nodes:
            fn(node)
        return
    with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
        for future in [pool.submit(fn, node) for node in nodes]:
            future.result()


def _follow_restarts(layout: Layout, state: LabState) -> None:
    """A docker-layout node's broker that `docker restart` started again (lotdeploy.lab.docker)
    runs under a new pid: the one its pid file names, once the recorded one is gone."""
    for node in state.nodes:
        role = f"broker:{node.name}"
        if node.profile != "docker" or role not in state.pids or hosts.alive(state, role):
            continue
        with contextlib.suppress(OSError, ValueError):
            pid = int((layout.node_sub(node.name, "run") / "broker.pid").read_text().strip())
            if hosts.is_lab_broker(pid, layout.node_dir(node.name)):
                hosts.remember(state, role, pid)


def problems(state: LabState) -> list[str]:
    """What is wrong with a lab that should be running (empty: healthy)."""
    found: list[str] = []
    for node in state.nodes:
        if not hosts.alive(state, f"sshd:{node.name}"):
            found.append(f"{node.name}: sshd not running")
        if f"broker:{node.name}" in state.pids and not hosts.alive(state, f"broker:{node.name}"):
            found.append(f"{node.name}: broker not running")
        if state.mode == "root" and node.ns not in netns.existing_namespaces(state.lab_id):
            found.append(f"{node.name}: namespace {node.ns} missing")
    if state.mode == "user" and not hosts.alive(state, "proxy"):
        found.append("proxy not running")
    return found


# -- down -------------------------------------------------------------------------------------


def down(lab_dir: Path, echo: Echo = _quiet) -> list[str]:
    """Remove everything the lab made, from its state and by its naming (after a crash too)."""
    lab_dir = lab_dir.resolve()
    ours = lab_dir.is_dir() and is_lab(lab_dir)
    if lab_dir.exists() and not ours and (not lab_dir.is_dir() or any(lab_dir.iterdir())):
        raise LabError(
            f"{lab_dir} holds no lab made by `lotdeploy lab up` (no {MARKER}): nothing removed"
        )
    state = labstate.load(lab_dir) if ours else None
    if state is not None and state.mode == "root" and os.geteuid() != 0:
        raise LabError(f"the lab in {lab_dir} was made as root; run `lab down` as root")
    if not ours:  # nothing of ours on disk: what the lab's naming finds (a crashed up's)
        removed = _teardown(lab_dir, None, echo=echo, keep_files=True)
    else:
        with labstate.locked(lab_dir):
            removed = _teardown(lab_dir, state, echo=echo, keep_files=False)
    echo("lab down: " + ("; ".join(removed) if removed else "nothing to remove"))
    return removed


def _teardown(lab_dir: Path, state: LabState | None, *, echo: Echo, keep_files: bool) -> list[str]:
    removed: list[str] = []
    lab_id = state.lab_id if state else labstate.lab_id_for(lab_dir)
    pids = set(hosts.lab_processes(lab_dir))
    if state is not None:
        pids.update(hosts.recorded_pids(state))
    is_root = os.geteuid() == 0
    namespaces = netns.existing_namespaces(lab_id) if is_root else []
    for ns in namespaces:
        pids.update(netns.namespace_pids(ns))
    if pids:
        hosts.stop_pids(sorted(pids))
        removed.append(f"{len(pids)} processes")
    if is_root:
        for ns in namespaces:
            netns.delete_namespace(ns)
        if namespaces:
            removed.append(f"{len(namespaces)} namespaces")
        links = netns.existing_links(lab_id)
        for link in links:
            netns.delete_link(link)
        if links:
            removed.append(f"{len(links)} links")
        netns.delete_host_rules(lab_id)
        _remove_mountpoints()
    if not keep_files and lab_dir.exists():
        for name in LAB_FILES:  # `.lab` (the marker) last, and only when the rest went
            path = lab_dir / name
            if name == ".lab" and any((lab_dir / n).exists() for n in LAB_FILES[:-1]):
                break
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        with contextlib.suppress(OSError):
            lab_dir.rmdir()  # only if nothing else is in it
        removed.append(f"files in {lab_dir}")
    elif state is not None:
        state.pids.clear()
        labstate.save(lab_dir, state)
    return removed


def _remove_mountpoints() -> None:
    """Remove the empty node mount points the labs created, once no lab namespace is left."""
    if not MOUNTPOINT_REGISTRY.exists() or netns.any_lab_namespaces():
        return
    for line in reversed(MOUNTPOINT_REGISTRY.read_text().splitlines()):
        with contextlib.suppress(OSError):
            Path(line).rmdir()
    MOUNTPOINT_REGISTRY.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        MOUNTPOINT_REGISTRY.parent.rmdir()


# -- faults -----------------------------------------------------------------------------------


def _changed(lab_dir: Path, state: LabState) -> None:
    labstate.save(lab_dir, state)
    if state.mode == "user":
        pid = state.pids.get("proxy")
        if not pid or not hosts.alive(state, "proxy"):
            raise LabError("the lab proxy is not running; run `lotdeploy lab up` again")
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.1)  # let the proxy take the new state before we report success


def apply_delays(lab_dir: Path, state: LabState, delays: dict[str, int]) -> None:
    for target, ms in delays.items():
        nodes, is_region = state.targets(target)
        for node in nodes:
            node.delay_ms = ms
            node.delay_scope = "region" if is_region else "all"
            if state.mode == "root":
                _root_delay(lab_dir, state, node)
    _changed(lab_dir, state)


def set_delay(lab_dir: Path, target: str, ms: int) -> list[str]:
    with labstate.locked(lab_dir):
        state = labstate.require(lab_dir)
        apply_delays(lab_dir, state, {target: ms})
        return [n.name for n in state.targets(target)[0]]


_netem: bool | None = None


def netem_available(node: Node) -> bool:
    """Does this kernel have the netem qdisc? Tried once on the node's own loopback."""
    global _netem
    if _netem is None:
        nsx = ["ip", "netns", "exec", node.ns, "tc"]
        _netem = try_run([*nsx, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
        if _netem:
            try_run([*nsx, "qdisc", "del", "dev", "lo", "root"])
    return _netem


def _root_delay(lab_dir: Path, state: LabState, node: Node) -> None:
    """netem on the host side of the veth (= node ingress) where it exists and the delay is for
    all traffic; otherwise NFQUEUE + the userspace delayer inside the node."""
    role = f"delayer:{node.name}"
    if state.pids.get(role):
        hosts.stop_pids(hosts.recorded_pids(_only(state, role)))
        hosts.forget(state, role)
    try_run(["tc", "qdisc", "del", "dev", node.veth, "root"], node=node.name)
    netns.set_delay_rules(state, Node(**{**node.__dict__, "delay_ms": 0}))
    if node.delay_ms <= 0:
        return
    if node.delay_scope == "all" and which("tc") and netem_available(node):
        run(
            [
                "tc",
                "qdisc",
                "replace",
                "dev",
                node.veth,
                "root",
                "netem",
                "delay",
                f"{node.delay_ms}ms",
                "limit",
                "100000",
            ],
            node=node.name,
        )
        return
    require_lab_extra(("fnfqueue",))  # latency without netem: the delayer holds packets
    log = Layout(lab_dir).node_sub(node.name, "delayer.log")
    argv = [
        "ip",
        "netns",
        "exec",
        node.ns,
        sys.executable,
        "-m",
        "lotdeploy.lab.delayer",
        "--delay",
        str(node.delay_ms),
        "--lab",
        str(lab_dir.resolve()) + "/",
    ]
    hosts.remember(state, role, hosts.spawn(argv, log, state.lab_id))
    _wait_queue_bound(node)
    netns.set_delay_rules(state, node)


def _only(state: LabState, role: str) -> LabState:
    keep = {k: v for k, v in state.pids.items() if k in (role, f"{role}@start")}
    return LabState(lab_id=state.lab_id, mode=state.mode, nodes=[], pids=keep)


def _wait_queue_bound(node: Node, timeout: float = 10.0) -> None:
    """Bounded wait until the delayer listens on queue 0, so the delay holds when we return."""
    deadline = time.monotonic() + timeout
    cmd = ["ip", "netns", "exec", node.ns, "cat", "/proc/net/netfilter/nfnetlink_queue"]
    while time.monotonic() < deadline:
        out = run(cmd, node=node.name, check=False).stdout
        if any(line.split()[:1] == ["0"] for line in out.splitlines()):
            return
        time.sleep(0.1)
    raise LabError(f"node {node.name}: the delayer did not start (see its delayer.log)")


def set_cut(lab_dir: Path, name: str, cut: bool) -> None:
    with labstate.locked(lab_dir):
        state = labstate.require(lab_dir)
        node = state.node(name)
        node.cut = cut
        if not cut:
            state.partitions = [p for p in state.partitions if name not in p]
        if state.mode == "root":
            netns.set_cut(node, cut)
            if not cut:
                for other in state.nodes:
                    netns.set_partitions(state, other)
        _changed(lab_dir, state)


def partition(lab_dir: Path, a: str, b: str) -> None:
    with labstate.locked(lab_dir):
        state = labstate.require(lab_dir)
        if a == b:
            raise LabError("partition needs two different nodes")
        state.node(a), state.node(b)
        if sorted([a, b]) not in [sorted(p) for p in state.partitions]:
            state.partitions.append(sorted([a, b]))
        if state.mode == "root":
            netns.set_partitions(state, state.node(a))
            netns.set_partitions(state, state.node(b))
        _changed(lab_dir, state)


# -- a broker dies, and comes back (failover rehearsals) ---------------------------------------


def kill_broker(lab_dir: Path, name: str, timeout: float = 5.0) -> int:
    """SIGKILL a node's lab broker (no clean shutdown: its clients and its peers' links see
    the connection drop, as when a broker host fails); returns the pid it had."""
    lab_dir = lab_dir.resolve()
    with labstate.locked(lab_dir):
        state = labstate.require(lab_dir)
        state.node(name)
        role = f"broker:{name}"
        _follow_restarts(Layout(lab_dir), state)
        if not hosts.alive(state, role):
            raise LabError(f"node {name}: its lab broker is not running (lotdeploy lab revive)")
        pid = state.pids[role]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while hosts.alive(state, role) and time.monotonic() < deadline:
            time.sleep(0.02)
        if hosts.alive(state, role):
            raise LabError(f"node {name}: its lab broker (pid {pid}) did not die")
        return pid  # still recorded: `lab status` shows the broker down until revived


def revive_broker(lab_dir: Path, name: str) -> int:
    """Start a node's lab broker again, as `lab up` started it (same address, ports, dialect,
    state directory: its routes, users and secrets come back); waits until it serves."""
    lab_dir = lab_dir.resolve()
    layout = Layout(lab_dir)
    with labstate.locked(lab_dir):
        state = labstate.require(lab_dir)
        node = state.node(name)
        _follow_restarts(layout, state)
        if hosts.alive(state, f"broker:{name}"):
            raise LabError(f"node {name}: its lab broker is running already")
        if state.mode == "root":
            if node.ns not in netns.existing_namespaces(state.lab_id):
                raise LabError(f"node {name}: namespace {node.ns} is gone (lotdeploy lab up)")
            wrap, listen = _root_runtime(layout, state, node)
        else:
            wrap, listen = _user_runtime(layout, node)
        _start_broker(layout, state, node, threading.Lock(), wrap=wrap, listen=listen)
        return state.pids[f"broker:{name}"]


# -- status / ssh -----------------------------------------------------------------------------


def status_rows(lab_dir: Path) -> list[dict[str, str]]:
    state = labstate.require(lab_dir)
    _follow_restarts(Layout(lab_dir), state)
    rows = []
    for node in state.nodes:
        broker = (
            "-"
            if f"broker:{node.name}" not in state.pids
            else ("up" if hosts.alive(state, f"broker:{node.name}") else "down")
        )
        parts = [p for p in state.partitions if node.name in p]
        cut = (
            "cut"
            if node.cut
            else (
                "from " + ",".join(p[0] if p[1] == node.name else p[1] for p in parts)
                if parts
                else "no"
            )
        )
        delay = (
            f"{node.delay_ms}ms" + (" (other regions)" if node.delay_scope == "region" else "")
            if node.delay_ms
            else "0"
        )
        rows.append(
            {
                "node": node.name,
                "address": node.address,
                "region": node.region,
                "sshd": "up" if hosts.alive(state, f"sshd:{node.name}") else "down",
                "broker": broker,
                "delay": delay,
                "cut": cut,
            }
        )
    return rows


def ssh_argv(lab_dir: Path, name: str, command: list[str]) -> list[str]:
    """The ssh command line for a node: the lab key, strict host key checking, no user config."""
    lab_dir = lab_dir.resolve()
    state = labstate.require(lab_dir)
    node = state.node(name)
    layout = Layout(lab_dir)
    ssh = which("ssh")
    if ssh is None:
        raise LabError("ssh is not installed (Debian package openssh-client)")
    return [
        ssh,
        "-F",
        "/dev/null",
        "-i",
        str(layout.client_key),
        "-p",
        str(node.ssh_port),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={layout.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=ERROR",
        f"{state.user}@{node.address}",
        *command,
    ]
