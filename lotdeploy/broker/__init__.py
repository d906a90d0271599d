"""The broker client: the Coreflux command channel, shared by apply, verify, the lab and tests."""

from lotdeploy.broker.client import (
    COMMAND_TOPIC,
    OUTPUT_TOPIC,
    ROUTES_TOPIC,
    BrokerClient,
    CommandFailed,
    ConnectRefused,
    Message,
    MqttConnection,
    MqttError,
    Reply,
    ReplyError,
    SyncBrokerClient,
    parse_reply,
)

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
