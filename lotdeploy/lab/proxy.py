"""User-mode (no root) faults: one asyncio TCP proxy per lab in front of every node's ports.

Each node's public ports (ssh, broker admin, broker TLS) on its 127.0.1.X address are served
here and forwarded to the real servers on port + BACKEND_OFFSET. The proxy applies the lab's
state: ingress delay (bytes towards the node are held N ms; a new connection waits N ms
before it is forwarded), cut (connections reset at once, new ones refused with RST) and
partitions (by source address). SIGHUP re-reads DIR/.lab/state.json.

    python -m lotdeploy.lab.proxy --lab DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lotdeploy.errors import LabError
from lotdeploy.lab import labstate
from lotdeploy.lab.labstate import LabState, Node

BACKEND_OFFSET = 10000
CHUNK = 65536


def front_ports(node: Node) -> list[int]:
    return [node.ssh_port, node.admin_port, node.tls_port]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0): the client sees 'connection reset' at once, no timeout."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


class Proxy:
    """Serves every node of one lab; `state` is swapped on SIGHUP."""

    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = lab_dir
        self.state: LabState = labstate.require(lab_dir)
        self.live: dict[str, set[asyncio.StreamWriter]] = {n.name: set() for n in self.state.nodes}

    def blocked(self, node: Node, peer_ip: str) -> bool:
        if node.cut:
            return True
        by_addr = {n.address: n for n in self.state.nodes}
        peer = by_addr.get(peer_ip)
        if peer is None:
            return False
        if peer.cut:
            return True
        return any({node.name, peer.name} == set(pair) for pair in self.state.partitions)

    def delay_for(self, node: Node, peer_ip: str) -> float:
        if node.delay_ms <= 0:
            return 0.0
        if node.delay_scope == "region":
            same = {n.address for n in self.state.nodes if n.region == node.region}
            if peer_ip in same:
                return 0.0
        return node.delay_ms / 1000.0

    def reload(self) -> None:
        """Take the new state; reset the connections the new state forbids."""
        try:
            self.state = labstate.require(self.lab_dir)
        except LabError as exc:
            print(f"proxy: keeping old state: {exc}", file=sys.stderr)
            return
        for node in self.state.nodes:
            for writer in list(self.live.get(node.name, ())):
                peer = writer.get_extra_info("peername")
                if peer and self.blocked(node, peer[0]):
                    _reset(writer)

    def current(self, name: str) -> Node:
        return self.state.node(name)

    async def handle(
        self,
        name: str,
        backend_port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        node = self.current(name)
        peer_ip = (writer.get_extra_info("peername") or ("", 0))[0]
        if self.blocked(node, peer_ip):
            _reset(writer)
            return
        delay = self.delay_for(node, peer_ip)
        if delay:
            await asyncio.sleep(delay)  # stands for the delayed SYN
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(node.address, backend_port), timeout=5
            )
        except (TimeoutError, OSError):
            _reset(writer)
            return
        live = self.live.setdefault(name, set())
        live.update((writer, up_writer))
        try:
            await asyncio.gather(
                self.pump(reader, up_writer, lambda: self.delay_for(self.current(name), peer_ip)),
                self.pump(up_reader, writer, lambda: 0.0),
            )
        finally:
            live.discard(writer)
            live.discard(up_writer)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    @staticmethod
    async def pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, get_delay: Callable[[], float]
    ) -> None:
        """Copy src to dst, each chunk `get_delay()` seconds after it arrived (order kept)."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await src.read(CHUNK):
                    await queue.put((time.monotonic() + get_delay(), data))
            except (OSError, asyncio.IncompleteReadError):
                pass
            await queue.put((time.monotonic() + get_delay(), b""))

        reader_task = asyncio.create_task(read())
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            reader_task.cancel()

    async def serve(self) -> None:
        servers = []
        for node in self.state.nodes:
            for port in front_ports(node):

                async def on_conn(
                    r: asyncio.StreamReader,
                    w: asyncio.StreamWriter,
                    name: str = node.name,
                    back: int = port + BACKEND_OFFSET,
                ) -> None:
                    await self.handle(name, back, r, w)

                servers.append(await asyncio.start_server(on_conn, node.address, port))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print("proxy: ready", flush=True)
        await stop.wait()
        for server in servers:
            server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lotdeploy.lab.proxy", description=__doc__)
    parser.add_argument("--lab", required=True, help="the lab directory")
    args = parser.parse_args(argv)
    try:
        asyncio.run(Proxy(Path(args.lab)).serve())
    except (LabError, OSError) as exc:
        sys.exit(f"proxy: {exc}")


if __name__ == "__main__":
    main()
