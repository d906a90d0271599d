"""The Coreflux broker interface: its protocol, and the client for its command channel.

* `protocol`: topics, verbs, CLUSTER_CONFIG keys, node defaults, the reply envelope
  (stdlib only, so the compiler, the linter, the plan and the lab broker can all use it);
* `mqtt`: one MQTT 3.1.1 connection (aiomqtt);
* `session`: `BrokerClient`, the admin session on the command channel;
* `sync`: `SyncBrokerClient`, the same for code without an event loop.

The names below are re-exported lazily: importing `lotdeploy.broker.protocol` must not load
aiomqtt and paho-mqtt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lotdeploy.broker.mqtt import ConnectRefused, Message, MqttConnection, MqttError
    from lotdeploy.broker.protocol import (
        COMMAND_TOPIC,
        OUTPUT_TOPIC,
        ROUTES_TOPIC,
        Reply,
        ReplyError,
        parse_reply,
    )
    from lotdeploy.broker.session import BrokerClient, CommandFailed
    from lotdeploy.broker.sync import SyncBrokerClient

_HOMES = {
    "COMMAND_TOPIC": "protocol",
    "OUTPUT_TOPIC": "protocol",
    "ROUTES_TOPIC": "protocol",
    "Reply": "protocol",
    "ReplyError": "protocol",
    "parse_reply": "protocol",
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
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
