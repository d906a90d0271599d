"""A Coreflux-compatible lab broker: amqtt plus the command channel and MQTT_CLUSTER routes.

See docs/lab-broker.md for exactly what it emulates and where it had to choose.
"""

from lotdeploy.lab.broker.server import LabBroker, LabConfig, LabNode

__all__ = ["LabBroker", "LabConfig", "LabNode"]
