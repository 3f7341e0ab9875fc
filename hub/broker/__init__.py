"""The hub's MQTT broker: a managed Mosquitto child process, the embedded fallback broker
where Mosquitto is missing, or an external broker."""

from hub.broker.child import BrokerError, BrokerMissing, ChildBroker
from hub.broker.embedded import EmbeddedBroker
from hub.broker.managed import managed_broker
from hub.broker.mosquitto import ManagedMosquitto, find_mosquitto

__all__ = [
    "BrokerError",
    "BrokerMissing",
    "ChildBroker",
    "EmbeddedBroker",
    "ManagedMosquitto",
    "find_mosquitto",
    "managed_broker",
]
