"""Per-model gauges for /metrics, read from the model pool at each scrape (a `model` label)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge_agent.runtime.pool import ModelPool


class ModelPoolCollector(Collector):
    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        rows = self.pool.ps()
        gauges = {
            "memory_bytes": GaugeMetricFamily(
                "edge_agent_model_memory_bytes",
                "Estimated memory of each loaded model (files plus measured overhead)",
                labels=["model"],
            ),
            "idle_seconds": GaugeMetricFamily(
                "edge_agent_model_idle_seconds",
                "Seconds since each loaded model was last asked for",
                labels=["model"],
            ),
            "queue_depth": GaugeMetricFamily(
                "edge_agent_model_queue_depth",
                "Requests waiting for a decode slot, per loaded model",
                labels=["model"],
            ),
            "active_sequences": GaugeMetricFamily(
                "edge_agent_model_active_sequences",
                "Sequences being generated, per loaded model",
                labels=["model"],
            ),
        }
        for row in rows:
            for key, family in gauges.items():
                family.add_metric([row["model"]], float(row[key]))
        yield from gauges.values()
        budget = GaugeMetricFamily(
            "edge_agent_model_memory_budget_bytes", "The memory budget loaded models share"
        )
        budget.add_metric([], float(self.pool.budget_bytes))
        yield budget
        loads = CounterMetricFamily(
            "edge_agent_model_loads", "Models loaded on demand since the agent started"
        )
        loads.add_metric([], float(self.pool.loads))
        yield loads
        unloads = CounterMetricFamily(
            "edge_agent_model_unloads",
            "Models unloaded (idle past keep-alive, or to make room) since the agent started",
        )
        unloads.add_metric([], float(self.pool.unloads))
        yield unloads
