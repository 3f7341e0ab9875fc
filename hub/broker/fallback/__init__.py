"""The fallback broker: a small MQTT 5 broker in Python for hubs where no Mosquitto binary
exists. Loopback only, with no ACL and no persistence; the hub says so loudly when it
starts one. Run as the hub's child process: `python -m hub.broker.fallback`."""

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) stays on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
