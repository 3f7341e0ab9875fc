"""A fleet simulator: many lightweight devices that speak the real protocol to the real
broker, for tests, the rollout benchmark and demos.

Each simulated device is enrolled through the hub's own device CA and registry (its own key,
a certificate with its device id as CN), connects to the managed Mosquitto over TLS with
client id = CN, receives its retained signed desired state and verifies it with
`edge_agent.protocol.verify_desired`, "installs" through a stub runtime whose failure rate,
error rate and latency are dialled per device (and per release), and publishes
InstallEvents and ReportedState in the agent's envelopes. It obeys the maintenance window
in its desired state like the agent. Telemetry goes through the agent's own aggregation,
pseudonym and VOPRF token code. Thousands of devices share one thread (`ClientLoop`).

Public API::

    from hub.simulate import (
        Behaviour, DeviceProfile, SimulatedFleet, enroll_simulated, director_public_keys,
    )

    enrolled = enroll_simulated(engine, ca, tmp / "sim", ["sim-0001", ...], group="lab")
    fleet = SimulatedFleet(
        BrokerAddress("127.0.0.1", broker.port, tls=True),
        director_public_keys(director.private_key()),
        issue_token=TokenIssuer(engine, keys).issue,   # optional: telemetry needs it
    )
    flaky = DeviceProfile(Behaviour(install_failure_rate=0.2, install_latency_s=0.5))
    fleet.add(enrolled[:10], profile=flaky, active={"chat": "1.0.0"})
    fleet.add(enrolled[10:], active={"chat": "1.0.0"})
    # a release that installs fine but errs twice as often:
    bad = DeviceProfile().with_version("1.1.0", error_rate=0.2)
    fleet.connect()                       # waits until every device is subscribed
    ... the hub assigns and publishes desired state ...
    fleet.wait_sequence({"sim-0001": 2})  # until these devices accepted sequence >= 2
    fleet.devices["sim-0001"].runtime.active   # {"chat": "1.1.0"}
    fleet.devices["sim-0001"].refusals         # why desired states were refused
    fleet.disconnect(["sim-0002"]); fleet.connect(["sim-0002"])   # offline, back online
    fleet.hold_reports(["sim-0003"]); fleet.hold_reports(["sim-0003"], hold=False)  # late
    fleet.send_telemetry(requests=20)     # reports of the last closed hour, with tokens
    fleet.on_verified(lambda device, state: ...)   # hook, in the loop's thread
    fleet.stop()                          # or `with SimulatedFleet(...) as fleet:`

Device attributes a test may read (written only by the loop's thread): `last_sequence`,
`verified_at` and `received_at` (time.monotonic()), `desired`, `refusals`, `sent` (every
Envelope published), `waiting_for_window` (model -> version downloaded, waiting),
`connected`, `subscribed`, `runtime.active`, `runtime.previous`.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.protocol.desired import key_id
from hub.simulate.device import SimulatedDevice
from hub.simulate.enroll import Enrolled, enroll_simulated
from hub.simulate.fleet import FleetTimeout, SimulatedFleet
from hub.simulate.loop import ClientLoop, raise_fd_limit
from hub.simulate.runtime import Behaviour, DeviceProfile, StubRuntime


def director_public_keys(
    *keys: Ed25519PrivateKey | Ed25519PublicKey,
) -> dict[str, Ed25519PublicKey]:
    """The trusted-key map `verify_desired` takes, from the hub's director key(s)."""
    publics: Iterable[Ed25519PublicKey] = (
        k.public_key() if isinstance(k, Ed25519PrivateKey) else k for k in keys
    )
    return {key_id(public): public for public in publics}


__all__ = [
    "Behaviour",
    "ClientLoop",
    "DeviceProfile",
    "Enrolled",
    "FleetTimeout",
    "SimulatedDevice",
    "SimulatedFleet",
    "StubRuntime",
    "director_public_keys",
    "enroll_simulated",
    "raise_fd_limit",
]
