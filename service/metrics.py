"""Prometheus metrics, one ``CollectorRegistry`` per app (two apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (re-exported for http)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# seconds: sub-millisecond tokenization up to multi-second batches of long texts
LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ropenlp_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ropenlp_request_duration_seconds",
            "HTTP request latency",
            ["route", "status"],
            buckets=LATENCY,
            registry=r,
        )
        self.stage = Histogram(
            "ropenlp_stage_seconds",
            "time per request in a stage: tokenize, queue, inference",
            ["route", "stage"],
            buckets=LATENCY,
            registry=r,
        )
        self.queue_requests = Gauge(
            "ropenlp_queue_requests", "requests admitted (queued or running)", registry=r
        )
        self.queue_sequences = Gauge("ropenlp_queue_sequences", "rows waiting for a batch", registry=r)
        self.batch_requests = Histogram(
            "ropenlp_batch_requests", "requests sharing one batch", ["task"], buckets=COUNTS, registry=r
        )
        self.batch_sequences = Histogram(
            "ropenlp_batch_sequences",
            "rows (texts or windows) in one batch",
            ["task"],
            buckets=COUNTS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "ropenlp_batch_tokens",
            "padded tokens (longest x rows) in one batch",
            ["task"],
            buckets=TOKENS,
            registry=r,
        )
        self.inference = Histogram(
            "ropenlp_inference_seconds", "model time per batch", ["task"], buckets=LATENCY, registry=r
        )
        self.dropped = Counter(
            "ropenlp_dropped_sequences",
            "queued rows dropped because their request was cancelled or failed",
            registry=r,
        )
        self.ready = Gauge("ropenlp_ready", "1 when the model is loaded and warmed up", registry=r)
        self.info = Gauge(
            "ropenlp_model_info",
            "the model being served",
            ["bundle", "provider", "precision", "version"],
            registry=r,
        )

    # -- BatchObserver ---------------------------------------------------------------------------

    def observe_batch(self, task: str, *, requests: int, sequences: int, tokens: int, seconds: float) -> None:
        self.batch_requests.labels(task).observe(requests)
        self.batch_sequences.labels(task).observe(sequences)
        self.batch_tokens.labels(task).observe(tokens)
        self.inference.labels(task).observe(seconds)

    def set_queue(self, *, requests: int, sequences: int) -> None:
        self.queue_requests.set(requests)
        self.queue_sequences.set(sequences)

    def observe_dropped(self, sequences: int) -> None:
        self.dropped.inc(sequences)

    # -- HTTP --------------------------------------------------------------------------------------

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)

    def observe_stages(self, route: str, *, tokenize_s: float, queue_s: float, inference_s: float) -> None:
        self.stage.labels(route, "tokenize").observe(tokenize_s)
        self.stage.labels(route, "queue").observe(queue_s)
        self.stage.labels(route, "inference").observe(inference_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
