"""Ray Serve: the same Litestar app (:func:`service.http.create_app`) as N replicas behind Ray Serve's
HTTP proxy. ``ropenlp serve --ray-replicas N`` (or ``serve run deploy/ray-serve.yaml``).

Each replica is a Ray actor that builds the app with :func:`~service.http.create_app` (settings
handed over from the driver, so every replica serves the same bundle with the same limits) and runs
its lifespan: the engine is loaded, the batcher started and the model warmed up in every replica;
``/ready`` answers 503 until then. A replica reserves ``intra_op_threads`` x ``inference_workers`` CPUs
(its ONNX Runtime threads; one worker unless set). Ray Serve routes requests across replicas, restarts
one that dies, and with
``max_ongoing_requests`` bounds what each accepts; past that the proxy queues (the app's own 429 /
Retry-After still applies inside each replica).

Ray is imported only here, inside functions: the base install and the serving image never need it.
"""

from __future__ import annotations

import logging
from typing import Any

from service.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "ropenlp"


class RopenlpReplica:
    """One replica: its Litestar app is built on the replica itself (``__serve_build_asgi_app__``, late-bound:
    the app and its engine are never pickled)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __serve_build_asgi_app__(self):
        from service.http import create_app
        from service.logs import configure_logging

        configure_logging(self.settings.log_format, self.settings.log_level)
        return create_app(self.settings)


def application(settings: Settings, replicas: int | None = None):
    """The Ray Serve application: ``replicas`` (default ``settings.ray_replicas``, at least 1) copies
    of the app, each reserving ``intra_op_threads`` x ``inference_workers`` CPUs (at least 1; one worker
    per replica unless set: a replica sees every core of its node)."""
    from ray import serve

    n = max(1, replicas if replicas is not None else settings.ray_replicas)
    # the replicas may run on other nodes, from another working directory: an absolute bundle path
    settings = settings.model_copy(update={"bundle": settings.bundle_dir.resolve()})
    if not settings.inference_workers:  # a replica sees every core of its node: one worker each, scale by replicas
        settings = settings.model_copy(update={"inference_workers": 1})
    ingress = serve.ingress()(RopenlpReplica)
    deployment = serve.deployment(
        ingress,
        name="ropenlp",
        num_replicas=n,
        ray_actor_options={"num_cpus": max(1, settings.intra_op_threads) * settings.inference_workers},
        max_ongoing_requests=settings.max_queue,
        health_check_period_s=10,
    )
    return deployment.bind(settings)


def build(args: dict[str, Any]):
    """The builder ``serve run`` calls (``import_path: service.serve_ray:build``); ``args`` are
    settings fields (``bundle``, ``ray_replicas``, ``max_items``, ...) over the ``ROPENLP_*`` variables."""
    return application(Settings.from_env(**args))


def run(settings: Settings) -> None:
    """``ropenlp serve --ray-replicas N``: join or start a cluster, serve on ``host:port`` until Ctrl-C
    or SIGTERM, then shut the application down."""
    import signal

    import ray
    from ray import serve

    ray.init(address=settings.ray_address, logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(application(settings), name=APP_NAME, route_prefix="/", blocking=False)
        log.info("Ray Serve: %d replicas on http://%s:%d", settings.ray_replicas, settings.host, settings.port)

        def stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
