"""Benchmark the lab broker's cluster link against naive alternatives, in one run, on loopback.

    .venv/bin/python bench/bench_lab_broker.py [--messages 5000] [--rounds 3] [--latency 200]

Measured (medians over rounds):
* start time (process spawn -> "ready" line) and resident memory per idle broker;
* throughput: N messages published on node A, received by a subscriber on node B through one
  MQTT_CLUSTER link (QoS 0 and QoS 1);
* latency: one message at a time, A -> link -> B, publish-to-receive (median and p95).
Baselines: (1) a plain amqtt 0.12.1 broker without the cluster layer, publisher and subscriber
on the same broker (the cost floor of a broker hop); (2) a naive forwarder that opens a new
connection to B for every message (what a per-message bridge costs).
The benchmark's own clients are lotdeploy's `MqttConnection` (aiomqtt), so the "plain amqtt"
rows include that client's cost too. Uses 127.0.0.50-127.0.0.53 and kernel-chosen ports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lotdeploy.broker.mqtt import Message, MqttConnection  # noqa: E402
from lotdeploy.broker.session import BrokerClient  # noqa: E402
from lotdeploy.secret import Secret  # noqa: E402

PASSWORD = "bench-admin-password"
PLAIN_AMQTT = """
import asyncio, json, logging
from amqtt.broker import Broker
logging.disable(logging.CRITICAL)
async def main():
    b = Broker({"listeners": {"default": {"type": "tcp", "bind": "%s:0"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                            {"allow_anonymous": True}}})
    await b.start()
    print(json.dumps({"event": "ready", "port":
          b._servers["default"].instance.sockets[0].getsockname()[1]}), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class Proc:
    def __init__(self, argv: list[str], workdir: Path) -> None:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=workdir
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        if not ready:
            self.stop()
            raise RuntimeError(f"no ready line from {argv}")
        self.port = int(json.loads(self.proc.stdout.readline())["port"])
        self.start_seconds = time.perf_counter() - t0

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def lab(host: str, workdir: Path) -> Proc:
    pw = workdir / "pw"
    pw.write_text(PASSWORD)
    return Proc(
        [
            sys.executable,
            "-m",
            "lotdeploy.lab.broker",
            "--bind",
            host,
            "--port",
            "0",
            "--admin-password-file",
            str(pw),
            "--log-level",
            "warning",
        ],
        workdir,
    )


def plain(host: str, workdir: Path) -> Proc:
    return Proc([sys.executable, "-c", PLAIN_AMQTT % host], workdir)


async def connect(
    host: str, port: int, user: str | None = "root", name: str = "c"
) -> MqttConnection:
    conn = MqttConnection(
        host,
        port,
        client_id=f"{name}-{time.monotonic_ns()}",
        username=user,
        password=Secret(PASSWORD) if user else None,
        keepalive=60,
        max_inflight=256,
    )
    await conn.connect()
    return conn


async def throughput(
    pub: Callable[[Message], Awaitable[None]], sub: MqttConnection, n: int, qos: int
) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        await pub(Message("bench/t", b"x" * 64 + str(i).encode(), qos))
    for _ in range(n):
        await asyncio.wait_for(sub.messages.get(), 30)
    return n / (time.perf_counter() - t0)


async def latency(
    pub: Callable[[Message], Awaitable[None]], sub: MqttConnection, n: int
) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await pub(Message("bench/t", str(i).encode(), 1))
        await asyncio.wait_for(sub.messages.get(), 10)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def publisher(conn: MqttConnection) -> Callable[[Message], Awaitable[None]]:
    """QoS 1: one publish at a time, each awaiting its PUBACK. QoS 0: pipelined, awaited in
    batches of 256 (a publish completes once paho has written it)."""
    window: list[asyncio.Future[None]] = []

    async def pub(msg: Message) -> None:
        if msg.qos:
            await conn.publish(msg, 10)
            return
        window.append(asyncio.ensure_future(conn.publish(msg, 10)))
        if len(window) >= 256:
            await asyncio.gather(*window)
            window.clear()

    return pub


def per_message(host: str, port: int) -> Callable[[Message], Awaitable[None]]:
    async def pub(msg: Message) -> None:
        conn = await connect(host, port, name="naive")
        await conn.publish(msg, 10)
        await conn.close()

    return pub


async def scenario(args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        res.setdefault(key, []).append(value)

    a, b = lab("127.0.0.50", workdir), lab("127.0.0.51", workdir)
    p = plain("127.0.0.52", workdir)
    try:
        for proc, kind in ((a, "lab"), (b, "lab"), (p, "plain amqtt")):
            add(f"start s ({kind})", proc.start_seconds)
            add(f"RSS MiB idle ({kind})", proc.rss_mib())
        async with BrokerClient("b", "127.0.0.51", b.port, "root", Secret(PASSWORD)) as cb:
            await cb.add_user("cluster", Secret("cluster-password"))
        async with BrokerClient("a", "127.0.0.50", a.port, "root", Secret(PASSWORD)) as ca:
            await ca.add_route(
                "DEFINE ROUTE ToB WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n"
                f"        WITH BROKER_ADDRESS \"127.0.0.51\"\n        WITH BROKER_PORT '{b.port}'\n"
                '        WITH CLIENT_ID "bench-a-b"\n        WITH USERNAME "cluster"\n'
                '        WITH PASSWORD "cluster-password"\n'
            )
            for _ in range(100):
                if (await ca.check_route_connection("ToB")).get("connection") == "Connected":
                    break
                await asyncio.sleep(0.05)
        pa = await connect("127.0.0.50", a.port, name="pub")
        sb = await connect("127.0.0.51", b.port, name="sub")
        await sb.subscribe([("bench/#", 1)])
        pp = await connect("127.0.0.52", p.port, user=None, name="ppub")
        sp = await connect("127.0.0.52", p.port, user=None, name="psub")
        await sp.subscribe([("bench/#", 1)])
        n = args.messages
        for _ in range(args.rounds):
            for qos in (0, 1):
                add(f"msg/s qos{qos}: lab A->link->B", await throughput(publisher(pa), sb, n, qos))
                add(
                    f"msg/s qos{qos}: plain amqtt, 1 broker",
                    await throughput(publisher(pp), sp, n, qos),
                )
            add(
                "msg/s qos1: naive new conn per msg",
                await throughput(per_message("127.0.0.51", b.port), sb, max(n // 10, 50), 1),
            )
            lat = await latency(publisher(pa), sb, args.latency)
            add("latency ms median: lab A->link->B", statistics.median(lat))
            add("latency ms p95: lab A->link->B", statistics.quantiles(lat, n=20)[-1])
            lat = await latency(publisher(pp), sp, args.latency)
            add("latency ms median: plain amqtt, 1 broker", statistics.median(lat))
            lat = await latency(per_message("127.0.0.51", b.port), sb, max(args.latency // 4, 20))
            add("latency ms median: naive new conn per msg", statistics.median(lat))
        add("RSS MiB after run (lab A)", a.rss_mib())
        add("RSS MiB after run (lab B)", b.rss_mib())
        for conn in (pa, sb, pp, sp):
            await conn.close()
    finally:
        for proc in (a, b, p):
            proc.stop()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = asyncio.run(scenario(args, Path(tmp)))
    width = max(len(k) for k in res)
    print(f"{'metric':<{width}}  {'median':>10}  samples")
    for key, values in res.items():
        print(f"{key:<{width}}  {statistics.median(values):>10.2f}  {len(values)}")


if __name__ == "__main__":
    main()
