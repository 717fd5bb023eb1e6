"""GET /metrics: Prometheus text exposition of the server and its engine.

    moe_jax_requests_total{outcome}            completion requests: ok, invalid, cancelled, error
    moe_jax_request_latency_seconds            histogram, request received -> last byte queued
    moe_jax_tokens_generated_total             tokens drawn by the engine
    moe_jax_tokens_per_second                  over the last 10 s
    moe_jax_queue_depth                        requests waiting for a slot
    moe_jax_slots_active / moe_jax_slots_total
    moe_jax_batch_occupancy                    active / total slots now
    moe_jax_batch_occupancy_mean               mean over all decode steps so far
    moe_jax_decode_steps_total, moe_jax_prefills_total
    moe_jax_busy_slot_steps_total              slots in use summed over decode steps (the
                                               occupancy of an interval from two scrapes)
    moe_jax_choices_finished_total{reason}     stop, length, cancelled, error

Each app has its own registry (several servers in one process stay apart); the engine's
figures are read at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
FINISH_REASONS = ("stop", "length", "cancelled", "error")


class _EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        s = self.engine.stats()
        total, active, steps = s["num_slots"], s["active_slots"], s.get("decode_steps", 0)

        def gauge(name, doc, value):
            return GaugeMetricFamily(f"moe_jax_{name}", doc, value=value)

        def counter(name, doc, value):
            return CounterMetricFamily(f"moe_jax_{name}", doc, value=value)

        yield counter("tokens_generated", "tokens drawn by the engine", s.get("tokens_generated", 0))
        yield counter("decode_steps", "decode steps run", steps)
        yield counter("busy_slot_steps", "sum over decode steps of the slots in use",
                      s.get("busy_slot_steps", 0))
        yield counter("prefills", "prompts prefilled", s.get("prefills", 0))
        yield gauge("tokens_per_second", "tokens drawn per second over the last 10 s",
                    s["tokens_per_second"])
        yield gauge("queue_depth", "requests waiting for a decode slot", s["queue_depth"])
        yield gauge("slots_active", "decode slots holding a request", active)
        yield gauge("slots_total", "decode slots", total)
        yield gauge("batch_occupancy", "active / total decode slots now", active / total)
        yield gauge("batch_occupancy_mean", "mean active / total slots over all decode steps",
                    s.get("busy_slot_steps", 0) / (steps * total) if steps else 0.0)
        finished = CounterMetricFamily("moe_jax_choices_finished", "completions ended, by reason",
                                       labels=["reason"])
        for reason in FINISH_REASONS:
            finished.add_metric([reason], s.get(f"finished_{reason}", 0))
        yield finished


class ServerMetrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        self.requests = Counter("moe_jax_requests", "completion requests by outcome", ["outcome"],
                                registry=self.registry)
        for outcome in ("ok", "invalid", "cancelled", "error"):
            self.requests.labels(outcome)  # exported at 0 before the first one
        self.latency = Histogram("moe_jax_request_latency_seconds",
                                 "completion request latency (received -> last byte queued)",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)
