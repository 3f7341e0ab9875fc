"""Anonymous usage telemetry (promise 7): collection, aggregation, anonymization, and the
local transparency log.

    collector      the recorder the inference path calls (O(1), one short lock)
    aggregate      fixed windows, histogram cells, coarsening, closed window -> reports
    pseudonym      the device secret and the weekly rotating HMAC pseudonym
    privacy        optional Laplace noise with a per-period epsilon budget
    hardware       coarse hardware class (cores, memory, accelerator buckets)
    lifecycle      the run marker that tells a crash from a clean stop
    transparency   the bounded log of exactly what was queued or logged, and its rendering
    publisher      closes due windows and queues or logs their reports, as the policy says
    factory        builds them all from TelemetryConfig; `show` for `edge-agent telemetry show`
"""

from edge_agent.telemetry.collector import Collector
from edge_agent.telemetry.hardware import hardware_class
from edge_agent.telemetry.lifecycle import RunMarker
from edge_agent.telemetry.privacy import LaplaceNoise, PrivacyBudget
from edge_agent.telemetry.pseudonym import load_or_create_secret, pseudonym
from edge_agent.telemetry.publisher import Policy, Publisher
from edge_agent.telemetry.transparency import Action, LogEntry, TransparencyLog, render

__all__ = [
    "Action",
    "Collector",
    "LaplaceNoise",
    "LogEntry",
    "Policy",
    "PrivacyBudget",
    "Publisher",
    "RunMarker",
    "TransparencyLog",
    "hardware_class",
    "load_or_create_secret",
    "pseudonym",
    "render",
]
