"""GET /metrics: Prometheus text format, with vLLM's names where the meaning is the same.

Three sources in one page: the HTTP metrics (app.telemetry), two gauges read from the engine at
scrape time, and vLLM's own engine metrics (time to first token, inter-token latency, end-to-end
latency, queue time, token counters, KV cache usage...), which vLLM's Prometheus stat logger
keeps in prometheus_client's default registry, next to the process metrics.
"""

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from app.openapi import documented

bp = Blueprint("metrics", __name__)

# Read from the scheduler at scrape time here. vLLM's gauges of the same names only change when
# the engine steps, so after the last request of a burst is aborted they would stay stale.
SCRAPE_TIME_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


class EngineCollector(Collector):
    """Gauges read at scrape time from the engine bridge and the concurrency cap."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        bridge = self.app.extensions["engine_bridge"]
        running, waiting = bridge.scheduler_counts()
        labels = {"model_name": bridge.model_name, "engine": "0"}
        for name, doc, value in zip(SCRAPE_TIME_GAUGES, (
            "Number of requests in model execution batches.",
            "Number of requests waiting to be processed.",
        ), (running, waiting)):
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            family.add_metric(list(labels.values()), value)
            yield family
        yield GaugeMetricFamily("http_requests_generating", "Sequences (prompts x n) holding a concurrency slot.",
                                value=self.app.extensions["concurrency"].in_use)


class DefaultRegistryCollector(Collector):
    """prometheus_client's default registry (vLLM's engine metrics, process and GC metrics)."""

    def collect(self):
        for family in REGISTRY.collect():
            if family.name not in SCRAPE_TIME_GAUGES:
                yield family


def init_app(app) -> None:
    registry = CollectorRegistry()
    registry.register(app.extensions["http_metrics"].registry)
    registry.register(EngineCollector(app))
    registry.register(DefaultRegistryCollector())
    app.extensions["metrics_registry"] = registry


@bp.get("/metrics")
@documented("Prometheus metrics (text format): vLLM's engine metrics and the HTTP metrics.",
            text="text/plain", tags=("server",))
def metrics():
    return Response(generate_latest(current_app.extensions["metrics_registry"]), mimetype=CONTENT_TYPE_LATEST)
