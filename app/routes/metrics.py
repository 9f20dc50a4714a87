"""GET /metrics: Prometheus text format, with vLLM's names where the meaning is the same."""

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

bp = Blueprint("metrics", __name__)


class EngineCollector(Collector):
    """Gauges read at scrape time from the engine bridge and the concurrency cap."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        bridge = self.app.extensions["engine_bridge"]
        running, waiting = bridge.scheduler_counts()
        labels = {"model_name": bridge.model_name}
        for name, doc, value in (
            ("vllm:num_requests_running", "Requests in the engine's running batch.", running),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled by the engine.", waiting),
        ):
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            family.add_metric(list(labels.values()), value)
            yield family
        yield GaugeMetricFamily("http_requests_generating", "Generation requests holding a concurrency slot.",
                                value=self.app.extensions["concurrency"].in_use)


def init_app(app) -> None:
    registry = CollectorRegistry()
    registry.register(EngineCollector(app))
    app.extensions["metrics_registry"] = registry


@bp.get("/metrics")
def metrics():
    return Response(generate_latest(current_app.extensions["metrics_registry"]), mimetype=CONTENT_TYPE_LATEST)
