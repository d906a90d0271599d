"""The client for the Coreflux broker's command channel.

The protocol itself (topics, verbs, CLUSTER_CONFIG keys, node defaults, the reply
envelope) is `lotdeploy.protocol`, a bottom-layer module with no dependencies, so the
compiler, the linter, the plan and the lab broker use it without this package.

* `mqtt`: one MQTT 3.1.1 connection (aiomqtt);
* `session`: `BrokerClient`, the admin session on the command channel;
* `sync`: `SyncBrokerClient`, the same for code without an event loop.

The names below are re-exported lazily: importing `lotdeploy.protocol` must not load
aiomqtt and paho-mqtt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lotdeploy.broker.mqtt import ConnectRefused, Message, MqttConnection, MqttError
    from lotdeploy.broker.session import BrokerClient, CommandFailed
    from lotdeploy.broker.sync import SyncBrokerClient
    from lotdeploy.protocol import (
        COMMAND_TOPIC,
        OUTPUT_TOPIC,
        ROUTES_TOPIC,
        Reply,
        ReplyError,
        parse_reply,
    )

_HOMES = {
    "COMMAND_TOPIC": "lotdeploy.protocol",
    "OUTPUT_TOPIC": "lotdeploy.protocol",
    "ROUTES_TOPIC": "lotdeploy.protocol",
    "Reply": "lotdeploy.protocol",
    "ReplyError": "lotdeploy.protocol",
    "parse_reply": "lotdeploy.protocol",
    "ConnectRefused": "mqtt",
    "Message": "mqtt",
    "MqttConnection": "mqtt",
    "MqttError": "mqtt",
    "BrokerClient": "session",
    "CommandFailed": "session",
    "SyncBrokerClient": "sync",
}

__all__ = [
    "COMMAND_TOPIC",
    "OUTPUT_TOPIC",
    "ROUTES_TOPIC",
    "BrokerClient",
    "CommandFailed",
    "ConnectRefused",
    "Message",
    "MqttConnection",
    "MqttError",
    "Reply",
    "ReplyError",
    "SyncBrokerClient",
    "parse_reply",
]


def __getattr__(name: str) -> Any:
    """Import a re-exported name's module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = home if home.startswith("lotdeploy.") else f"{__name__}.{home}"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
