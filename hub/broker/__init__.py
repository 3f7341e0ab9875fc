"""The hub's MQTT broker: a managed Mosquitto child process, or an external broker."""

from hub.broker.child import BrokerError, BrokerMissing, ChildBroker
from hub.broker.managed import managed_broker
from hub.broker.mosquitto import ManagedMosquitto, find_mosquitto

__all__ = [
    "BrokerError",
    "BrokerMissing",
    "ChildBroker",
    "ManagedMosquitto",
    "find_mosquitto",
    "managed_broker",
]
