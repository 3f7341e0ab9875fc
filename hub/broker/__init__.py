"""The hub's MQTT broker: a managed Mosquitto child process, or an external broker."""

from hub.broker.mosquitto import (
    BrokerError,
    BrokerMissing,
    ManagedMosquitto,
    find_mosquitto,
    managed_broker,
)

__all__ = ["BrokerError", "BrokerMissing", "ManagedMosquitto", "find_mosquitto", "managed_broker"]
