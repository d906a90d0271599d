"""Userspace latency for kernels without netem: hold every packet of NFQUEUE 0 for N ms.

Runs inside a node's namespace (NFQUEUE is per namespace), fed by the node's LAB-DELAY chain on
ingress. The rule uses --queue-bypass, so if this process dies the node loses its delay, not
its connectivity. One reader thread receives, one releaser thread gives verdicts in order
(constant delay keeps FIFO order, so no reordering).

    ip netns exec NS python -m lotdeploy.lab.delayer --delay 80 --lab DIR
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import threading
import time
from typing import Any


def serve(delay_ms: int, queue_num: int = 0) -> None:
    """Receive packets and release each `delay_ms` after its arrival, until SIGTERM."""
    import fnfqueue  # optional dependency: only the root-mode lab without netem needs it

    conn = fnfqueue.Connection(alloc_size=64, chunk_size=16, packet_size=4096)
    try:
        queue = conn.bind(queue_num)
    except OSError as exc:
        sys.exit(f"delayer: cannot bind NFQUEUE {queue_num}: {exc}")
    queue.set_mode(128, fnfqueue.COPY_META)  # headers are enough: we only hold packets
    pending: collections.deque[tuple[float, Any]] = collections.deque()
    ready = threading.Condition()
    delay = delay_ms / 1000.0
    stopping = threading.Event()

    def release() -> None:
        while not stopping.is_set():
            with ready:
                while not pending and not stopping.is_set():
                    ready.wait(0.5)
                if stopping.is_set():
                    break
                due, packet = pending[0]
                wait = due - time.monotonic()
                if wait > 0:
                    ready.wait(wait)
                    continue
                pending.popleft()
            try:
                packet.accept()
            except Exception:  # a packet the kernel forgot (queue flushed): nothing to do
                continue

    def stop(_sig: int, _frm: object) -> None:
        stopping.set()
        conn.close()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        while not stopping.is_set():
            try:
                for packet in conn:
                    with ready:
                        pending.append((time.monotonic() + delay, packet))
                        ready.notify()
                break  # the connection was closed by stop()
            except fnfqueue.BufferOverflowException:
                conn.reset()  # the kernel dropped some packets; TCP retransmits them
    except Exception as exc:
        if not stopping.is_set():
            sys.exit(f"delayer: {exc}")
    finally:
        stopping.set()
        with ready:
            ready.notify_all()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lotdeploy.lab.delayer", description=__doc__)
    parser.add_argument("--delay", type=int, required=True, help="milliseconds to hold packets")
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number (default 0)")
    parser.add_argument("--lab", default="", help="lab directory (marks the process as the lab's)")
    args = parser.parse_args(argv)
    serve(args.delay, args.queue)


if __name__ == "__main__":
    main()
