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

from edge_agent.lazy import lazy_exports

# Exported lazily: the API imports the collector on every start, and the publisher side
# (the outbox, SQLAlchemy, paho) must not come with it when nothing is sent. The function
# `pseudonym` lives in edge_agent.telemetry.pseudonym (the package attribute is the module).
_EXPORTS = {
    "Action": "edge_agent.telemetry.transparency",
    "Collector": "edge_agent.telemetry.collector",
    "LaplaceNoise": "edge_agent.telemetry.privacy",
    "LogEntry": "edge_agent.telemetry.transparency",
    "Policy": "edge_agent.telemetry.publisher",
    "PrivacyBudget": "edge_agent.telemetry.privacy",
    "Publisher": "edge_agent.telemetry.publisher",
    "RunMarker": "edge_agent.telemetry.lifecycle",
    "TransparencyLog": "edge_agent.telemetry.transparency",
    "hardware_class": "edge_agent.telemetry.hardware",
    "load_or_create_secret": "edge_agent.telemetry.pseudonym",
    "render": "edge_agent.telemetry.transparency",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
