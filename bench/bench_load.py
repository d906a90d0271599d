"""Benchmark `verify --load` on a lab broker pair against a plain amqtt pair doing the same
forwarding, in one run, on loopback.

    .venv/bin/python bench/bench_load.py [--rates 200,600] [--seconds 4] [--rounds 3]

The same measurement, lotdeploy's own load probe (`lotdeploy.verify.load.LoadRun`, what
`verify --load RATE --for SECONDS` runs), publishes RATE messages a second on node A for
SECONDS and counts, per message, its arrival on A (local) and on B:

* lab pair: two `lotdeploy lab broker` processes, A with one MQTT_CLUSTER route to B (the
  lab broker's link: queue, validity, pipelined QoS 1);
* plain pair (the naive alternative): two plain amqtt 0.12.1 brokers and a separate forwarder
  process that subscribes to the probe topics on A and republishes each message to B, QoS 1,
  pipelined (what a hand-written bridge client does).

Rounds alternate which pair goes first; reported are medians over rounds of A→B throughput,
delay (median, p95, max: publish on A to arrival on B, on one monotonic clock) and loss, and
the ratios lab / plain. The machine is shared and has two cores: read the ratios, not the
absolute figures. Uses 127.0.0.56-127.0.0.59 and kernel-chosen ports.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_lab_broker import PASSWORD, Proc, lab, plain  # noqa: E402
from lotdeploy.broker.session import BrokerClient  # noqa: E402
from lotdeploy.secret import Secret  # noqa: E402
from lotdeploy.verify.failover import ExerciseContext  # noqa: E402
from lotdeploy.verify.load import LoadPlan, LoadRun  # noqa: E402
from lotdeploy.verify.probe import Endpoint  # noqa: E402

PROBE_USER, PROBE_PASSWORD = "bench_probe", "bench-probe-password"
#: The naive bridge: subscribe on A, republish every message to B, QoS 1, pipelined.
FORWARDER = """
import asyncio, json, sys, time
sys.path.insert(0, %r)
from lotdeploy.broker.mqtt import Message, MqttConnection
async def main(ha, pa, hb, pb):
    out = MqttConnection(hb, pb, client_id=f"fwd-out-{time.monotonic_ns()}", username="x",
                         keepalive=60, max_inflight=1000)
    await out.connect()
    pending = set()
    def forward(msg):
        task = asyncio.ensure_future(out.publish(Message(msg.topic, msg.payload, 1), 30))
        pending.add(task)
        task.add_done_callback(pending.discard)
    inp = MqttConnection(ha, pa, client_id=f"fwd-in-{time.monotonic_ns()}", username="x",
                         keepalive=60, on_message=forward, max_inflight=1000)
    await inp.connect()
    await inp.subscribe([("bench/probe/#", 1)], 10)
    print(json.dumps({"event": "ready", "port": 0}), flush=True)
    await asyncio.Event().wait()
asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])))
"""


async def lab_pair(workdir: Path) -> tuple[list[Proc], dict[str, Endpoint]]:
    a, b = lab("127.0.0.56", workdir), lab("127.0.0.57", workdir)
    async with BrokerClient("b", "127.0.0.57", b.port, "root", Secret(PASSWORD)) as cb:
        await cb.add_user("cluster", Secret("cluster-password"))
        await cb.add_user(PROBE_USER, Secret(PROBE_PASSWORD))
    async with BrokerClient("a", "127.0.0.56", a.port, "root", Secret(PASSWORD)) as ca:
        await ca.add_user(PROBE_USER, Secret(PROBE_PASSWORD))
        await ca.add_route(
            "DEFINE ROUTE ToB WITH TYPE MQTT_CLUSTER\n    ADD CLUSTER_CONFIG\n"
            f"        WITH BROKER_ADDRESS \"127.0.0.57\"\n        WITH BROKER_PORT '{b.port}'\n"
            '        WITH CLIENT_ID "bench-a-b"\n        WITH USERNAME "cluster"\n'
            '        WITH PASSWORD "cluster-password"\n'
            "        WITH MESSAGE_VALIDITY_SEC '60'\n"
        )
        for _ in range(100):
            if (await ca.check_route_connection("ToB")).get("connection") == "Connected":
                break
            await asyncio.sleep(0.05)
    return [a, b], {
        "A": Endpoint("A", "127.0.0.56", a.port),
        "B": Endpoint("B", "127.0.0.57", b.port),
    }


def plain_pair(workdir: Path) -> tuple[list[Proc], dict[str, Endpoint]]:
    a, b = plain("127.0.0.58", workdir), plain("127.0.0.59", workdir)
    forwarder = Proc(
        [
            sys.executable,
            "-c",
            FORWARDER % str(REPO),
            "127.0.0.58",
            str(a.port),
            "127.0.0.59",
            str(b.port),
        ],
        workdir,
    )
    return [a, b, forwarder], {
        "A": Endpoint("A", "127.0.0.58", a.port),
        "B": Endpoint("B", "127.0.0.59", b.port),
    }


async def measure(
    endpoints: dict[str, Endpoint], rate: float, seconds: float, tag: str
) -> dict[str, float]:
    run_id = f"{tag}-{time.monotonic_ns()}"
    ctx = ExerciseContext(
        endpoints=endpoints,
        username=PROBE_USER,
        password=Secret(PROBE_PASSWORD),
        root=f"bench/probe/{run_id}",
        run_id=run_id,
        timeout=5.0,
        reconnect_allowance=5.0,
        validity={("A", "B"): 60},
    )
    checks = await LoadRun(LoadPlan(rate=rate, seconds=seconds, sources=("A",)), ctx).run()
    (link,) = [c for c in checks if c.subject == "A → B"]
    return {
        "throughput": link.throughput or 0.0,
        "delay median ms": link.latency_ms or float("nan"),
        "delay p95 ms": link.p95_ms or float("nan"),
        "delay max ms": link.max_ms or float("nan"),
        "lost": float((link.sent or 0) - (link.received or 0)),
    }


async def scenario(
    args: argparse.Namespace, workdir: Path
) -> dict[tuple[float, str, str], list[float]]:
    results: dict[tuple[float, str, str], list[float]] = {}
    lab_procs, lab_ends = await lab_pair(workdir)
    plain_procs, plain_ends = plain_pair(workdir)
    try:
        for index in range(args.rounds):
            for rate in args.rates:
                order = [("lab", lab_ends), ("plain", plain_ends)]
                if index % 2:
                    order.reverse()
                for kind, ends in order:
                    found = await measure(ends, rate, args.seconds, f"{kind}{index}")
                    for key, value in found.items():
                        results.setdefault((rate, kind, key), []).append(value)
    finally:
        for proc in lab_procs + plain_procs:
            proc.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="200,600", help="messages/s on A, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        results = asyncio.run(scenario(args, Path(tmp)))
    print(f"load probe A -> B, {args.seconds:g} s per run, medians of {args.rounds} rounds")
    keys = ["throughput", "delay median ms", "delay p95 ms", "delay max ms", "lost"]
    print(f"{'rate/s':>7}  {'pair':<6}" + "".join(f"{k:>17}" for k in keys))
    for rate in args.rates:
        med = {
            kind: {k: statistics.median(results[(rate, kind, k)]) for k in keys}
            for kind in ("lab", "plain")
        }
        for kind in ("lab", "plain"):
            print(f"{rate:>7g}  {kind:<6}" + "".join(f"{med[kind][k]:>17.1f}" for k in keys))
        ratios = [
            med["lab"][k] / med["plain"][k] if med["plain"][k] else float("nan") for k in keys[:4]
        ]
        print(
            f"{rate:>7g}  {'ratio':<6}"
            + "".join(f"{r:>17.2f}" for r in ratios)
            + "   (lab / plain)"
        )


if __name__ == "__main__":
    main()
