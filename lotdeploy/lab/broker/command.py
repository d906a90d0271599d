"""What `lotdeploy lab broker` runs: one Coreflux-compatible lab broker in the foreground.

Plain functions; the click command is `lotdeploy.cli.lab_broker`. SIGTERM/SIGINT stop it
cleanly; SIGHUP reloads the TLS files (and opens the TLS listener if the files appeared since
the start). Once listening it prints one JSON line on stdout,
`{"event": "ready", "port": ..., "tls_port": ...}`, so scripts can use `--port 0`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from lotdeploy.errors import LabError
from lotdeploy.lab.broker.server import LabConfig, LabNode
from lotdeploy.secret import ScrubFilter, Secret

log = logging.getLogger(__name__)


async def serve(config: LabConfig) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads TLS."""
    node = LabNode(config)
    await node.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    background: set[asyncio.Task[None]] = set()

    def reload() -> None:
        task = asyncio.create_task(node.reload_tls())
        background.add(task)
        task.add_done_callback(background.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    ready = {
        "event": "ready",
        "node": config.name,
        "bind": config.bind,
        "tls_bind": config.tls_address,
        "port": node.port,
        "tls_port": node.tls_port if node._tls_server is not None else None,
        "dialect": config.dialect.label,
    }
    print(json.dumps(ready), flush=True)
    log.info("lab broker %s ready on %s:%s", config.name, config.bind, node.port)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await node.stop()
        print(json.dumps({"event": "stopped"}), flush=True)


def setup_logging(level: str) -> None:
    """The broker's own log format on stderr, scrubbed; amqtt's chatter kept quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # amqtt logs packets and sessions at INFO/DEBUG; only its warnings are useful here.
    logging.getLogger("amqtt").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("transitions").setLevel(logging.WARNING)


def read_admin_password(path: Path | None) -> Secret:
    """The admin password from its file (never from the command line, where `ps` shows it)."""
    if path is None:
        log.warning("no --admin-password-file: using the vendor default admin password")
        return Secret("coreflux", public=True)
    try:
        value = path.read_text().strip("\r\n")
    except OSError as exc:
        raise LabError(f"--admin-password-file: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise LabError(f"--admin-password-file: {path} is empty")
    return Secret(value)


def run_broker(config: LabConfig) -> None:
    """Serve until stopped; a LabError (e.g. address in use) reaches the caller as is."""
    asyncio.run(serve(config))
