"""Service settings: one frozen pydantic model, filled from ``ROPENLP_*`` environment variables and
from the flags of ``ropenlp serve`` (flags win). Read inside ``create_app`` / the CLI, never at import.

Every field ``name`` is read from the variable ``ROPENLP_<NAME>`` (``ROPENLP_BATCH_TOKENS=4096``);
an empty variable counts as unset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from models.precisions import Precision

log = logging.getLogger(__name__)

ENV_PREFIX = "ROPENLP_"
BUNDLES_DIR = Path(__file__).resolve().parent / "bundles"  # the bundles shipped with ropenlp, by name
DEFAULT_BUNDLE = BUNDLES_DIR / "default"


def shipped_bundles() -> list[str]:
    """Names of the bundles shipped with ropenlp (``default``, ``medical``): ``--bundle NAME`` serves one."""
    return sorted(d.name for d in BUNDLES_DIR.iterdir() if (d / "bundle.json").is_file()) if BUNDLES_DIR.is_dir() else []


def resolve_bundle(bundle: str | Path | None) -> Path:
    """``--bundle`` as given: a directory wins over a shipped bundle of the same name; no bundle = the default."""
    if bundle is None:
        return DEFAULT_BUNDLE
    path = Path(bundle)
    if not path.exists() and str(bundle) in shipped_bundles():
        return BUNDLES_DIR / str(bundle)
    return path


def available_cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (``docker --cpus``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, int(quota) // int(period)))


class SettingsError(ValueError):
    """Invalid settings: the message names the variable / flag and the problem."""


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # the model
    bundle: Path | None = Field(
        None,
        description="bundle directory, or the name of a bundle shipped with ropenlp (default, medical); "
        "default: the shipped 'default' bundle",
    )
    provider: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto: CUDA when a session really gets it, else CPU"
    )
    allow_cpu_fallback: bool = Field(
        False, description="with provider=cuda: run on CPU instead of failing at start-up"
    )
    precision: Precision | None = Field(
        None, description="graph variant (models.precisions); default: the provider's preferred one"
    )
    intra_op_threads: int = Field(
        1, ge=0, description="ONNX Runtime threads inside an operator (0 = one per core)"
    )
    inter_op_threads: int = Field(1, ge=0, description="ONNX Runtime threads across operators (0 = default)")
    inference_workers: int = Field(
        0, ge=0, description="batches run at once by the server, each on its own thread with intra_op_threads "
        "ONNX Runtime threads (0 = the cores available to the process / intra_op_threads)"
    )
    ner_max_length: int | None = Field(
        None, ge=3, description="tokens per NER window (<= the bundle's); default: the bundle's"
    )
    ner_stride: int | None = Field(
        None, ge=1, description="tokens between NER window starts; default: the bundle's"
    )
    lexicon: Path | None = Field(
        None, description="NER user lexicon, term<TAB>label<TAB>add|block lines, applied after the bundle's "
        "lexicon.tsv (service.lexicon); default: none"
    )
    normalize: str | None = Field(
        None, description="text normalisation before the tokenizer: none, width, t2s or width,t2s "
        "(offsets stay those of the original text); default: the bundle's manifest"
    )

    # batching and limits
    batch_tokens: int = Field(
        8192, ge=16, description="token budget of one batch, charged as longest x count"
    )
    max_wait_ms: float = Field(
        2.0, ge=0, description="longest time the first request of a batch waits for company"
    )
    max_queue: int = Field(
        256, ge=1, description="requests admitted at once (queued or running); more get 429"
    )
    max_items: int = Field(64, ge=1, description="texts / pairs / candidates per request")
    max_chars: int = Field(10_000, ge=1, description="characters per text")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="request body size")
    threshold_min: float = Field(-10.0, description="lowest NER threshold a request may ask for")
    threshold_max: float = Field(10.0, description="highest NER threshold a request may ask for")
    max_entities: int = Field(
        20_000, ge=1, description="entities in one NER answer; more is an error (raise the threshold)"
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 429 / 503")

    # health and shutdown
    watchdog_s: float = Field(
        30.0, gt=0, description="a model call running longer than this, or queued work with no batch started "
        "or finished for this long, makes /health and /ready answer 503 (restart the process)",
    )
    drain_s: float = Field(
        10.0, ge=0, description="after SIGTERM: seconds in-flight requests get to finish (then they are "
        "cancelled), and again for the model call then running",
    )

    # HTTP server
    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0: all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    api_key: SecretStr | None = Field(
        None, description="when set, inference routes need 'Authorization: Bearer <key>'"
    )
    ray_replicas: int = Field(
        0, ge=0, description="serve through Ray Serve, this many replicas of the app (pip install "
        "'ropenlp[ray]'); 0: one uvicorn process"
    )
    ray_address: str | None = Field(
        None, description="with ray_replicas: the Ray cluster to join (auto: the running one); default: a local one"
    )
    log_format: Literal["json", "text"] = Field("json", description="log lines as JSON objects or plain text")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.normalize is not None:
            from models.normalize import Normalize

            Normalize.parse(self.normalize)  # ValueError naming the choices
        if self.threshold_min > self.threshold_max:
            raise ValueError(f"threshold_min {self.threshold_min} > threshold_max {self.threshold_max}")
        if (
            self.ner_max_length is not None
            and self.ner_stride is not None
            and self.ner_stride > self.ner_max_length - 2
        ):
            raise ValueError(
                f"ner_stride {self.ner_stride} exceeds ner_max_length - 2 = {self.ner_max_length - 2}"
            )
        return self

    @property
    def workers(self) -> int:
        """``inference_workers`` resolved: 0 = the cores available / ``intra_op_threads`` (at least 1)."""
        if self.inference_workers:
            return self.inference_workers
        cores = available_cores()
        return max(1, cores // (self.intra_op_threads or cores))  # intra_op 0: ONNX Runtime takes every core

    @property
    def bundle_dir(self) -> Path:
        """The bundle given (a directory wins over a shipped bundle of the same name), else the default."""
        return resolve_bundle(self.bundle)

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults <- ``ROPENLP_*`` variables <- ``overrides`` (CLI flags; None = not given)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = environ.get(cls.env_name(name))
            if raw is not None and raw.strip() != "":
                values[name] = raw.strip()
        known = {cls.env_name(n) for n in cls.model_fields}
        for var in sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known):
            log.warning("ignoring unknown environment variable %s", var)
        given = {k: v for k, v in overrides.items() if v is not None}
        from_env = set(values) - set(given)
        values.update(given)
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            problems = []
            for err in e.errors():
                name = str(err["loc"][0]) if err["loc"] else ""
                where = cls.env_name(name) if name in from_env else (name or "settings")
                problems.append(f"{where}: {err['msg']}")
            raise SettingsError("invalid settings: " + "; ".join(problems)) from None

    def public(self) -> dict[str, object]:
        """The settings as JSON-able values, the API key masked (for /info and the start-up log)."""
        d = self.model_dump(mode="json")
        d["api_key"] = "***" if self.api_key is not None else None
        return d
