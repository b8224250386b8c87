"""Core: validate, tokenize, batch by token budget, run, decode. No HTTP here, and no task by name.

The HTTP app and the batch-scoring CLI both call this layer. Every request names an *operation*
(``ner``, ``similarity``, ``embed``, or any registered one: :mod:`service.tasks`) with a typed query;
the operation's task kind ``prepare`` s it into a :class:`~service.jobs.Job`: the rows (sequences)
to run plus the plain state its ``finish`` needs to assemble the answer. Jobs are run either here,
synchronously (:meth:`Engine.execute`: batches by token budget, for the CLI and tests), or by
:class:`service.batching.Batcher`, which mixes the rows of concurrent requests into shared batches.
Both go through :meth:`Engine.run_batch` (pad, run the task's graph, the task's ``postprocess``),
so batching cannot change a result beyond float rounding of a differently padded batch.

The Python API: ``engine.run("ner", texts=[...], threshold=0.3)`` returns the operation's result
(``NerResult``, ``PairsResult``, ...); ``engine.render(op, result)`` its response model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from models.batches import MAX_PADDING, plan_batches
from models.bundle import BundleError, Manifest, load_manifest
from models.normalize import Normalize, Normalizer
from models.text import Tokenizer, pad_batch
from service.errors import InferenceError, ServiceError, TaskUnavailable
from service.jobs import Job, Limits, Seq
from service.runtime import Runtime
from service.tasks import OPERATIONS, TASKS, Operation, Task

log = logging.getLogger(__name__)


class Engine:
    """Tokenizer + runtime + manifest, and one bound :class:`~service.tasks.Task` per task of the bundle.

    ``options``: the settings task kinds read (``Task.option_keys``, e.g. ``ner_max_length``).
    """

    def __init__(
        self,
        runtime: Runtime,
        tokenizer: Tokenizer,
        manifest: Manifest,
        *,
        limits: Limits = Limits(),
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.runtime, self.tokenizer, self.manifest, self.limits = runtime, tokenizer, manifest, limits
        self.options = dict(options or {})
        self._feeds = {task: _feed_builder(task, runtime.inputs(task)) for task in manifest.tasks}
        self._tasks: dict[str, Task] = {}
        for name, spec in manifest.tasks.items():
            if name not in TASKS:
                raise BundleError(f"the bundle's {name} task is of a kind this ropenlp does not serve "
                                  f"(knows: {', '.join(TASKS)})")  # fmt: skip
            self._tasks[name] = TASKS[name](spec, tokenizer, limits, self.options)
        if limits.batch_tokens < max(t.max_length for t in manifest.tasks.values()):
            log.warning(
                "batch_tokens %d is below a task's max_length: long sequences run alone", limits.batch_tokens
            )

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        *,
        limits: Limits = Limits(),
        options: Mapping[str, Any] | None = None,
        normalize: Normalize | None = None,
        **runtime_options: Any,
    ) -> Engine:
        """Load a bundle from disk: manifest (validated, hashes checked), tokenizer, ONNX sessions.

        The tokenizer applies the manifest's ``normalize`` (or ``normalize``, when given: the server's
        ``--normalize``); tasks find their own optional files through ``options["bundle_dir"]``."""
        from service.runtime import OnnxRuntime

        bundle_dir = Path(bundle_dir)
        manifest = load_manifest(bundle_dir)
        tokenizer = Tokenizer.load(bundle_dir / manifest.tokenizer, lowercase=manifest.lowercase)
        norm = manifest.normalize if normalize is None else normalize
        tokenizer = tokenizer.normalizing(Normalizer(norm) if norm.enabled else None)
        runtime = OnnxRuntime(bundle_dir, manifest, **runtime_options)
        options = {**(options or {}), "bundle_dir": bundle_dir}
        return cls(runtime, tokenizer, manifest, limits=limits, options=options)

    @classmethod
    def from_settings(cls, settings) -> Engine:
        """An engine as ``service.settings.Settings`` describe it (the server and the CLI)."""
        s = settings
        limits = Limits.of(s)
        options = {k: getattr(s, k) for task in TASKS.values() for k in task.option_keys}
        return cls.load(
            s.bundle_dir,
            limits=limits,
            options=options,
            normalize=None if s.normalize is None else Normalize.parse(s.normalize),
            provider=s.provider,
            allow_cpu_fallback=s.allow_cpu_fallback,
            precision=s.precision,
            intra_op_threads=s.intra_op_threads,
            inter_op_threads=s.inter_op_threads,
        )

    # -- operations ---------------------------------------------------------------------------

    def operation(self, name: str) -> tuple[Operation, Task]:
        """The operation and the bound task it runs on; :class:`TaskUnavailable` when the bundle lacks it."""
        op = OPERATIONS.get(name)
        if op is None:
            raise ValueError(f"unknown operation {name!r} (known: {', '.join(OPERATIONS)})")
        return op, self.task(op.task)

    def task(self, kind: str) -> Task:
        task = self._tasks.get(kind)
        if task is None:
            raise TaskUnavailable(
                f"the loaded bundle {self.manifest.name!r} has no {kind} model (has: {', '.join(self._tasks)})"
            )
        return task

    def query(self, name: str, **fields: Any) -> BaseModel:
        """A query for ``name`` built from plain values, unchecked: ``prepare`` checks every field."""
        op = OPERATIONS.get(name)
        if op is None:
            raise ValueError(f"unknown operation {name!r} (known: {', '.join(OPERATIONS)})")
        return op.query.model_construct(**fields)

    def prepare(self, name: str, query: BaseModel) -> Job:
        """Validate and tokenize a query into a job (no model run)."""
        op, task = self.operation(name)
        return op.prepare(task, query)

    def finish(self, job: Job, outputs: list[Any]) -> Any:
        """The job's result from its rows' outputs (``run_batch`` values, in row order)."""
        op, task = self.operation(job.operation)
        return op.finish(task, job, outputs)

    def render(self, name: str, result: Any) -> BaseModel:
        """A result as its operation's response model (what HTTP returns)."""
        return OPERATIONS[name].render(result)

    def run(self, name: str, query: BaseModel | None = None, /, **fields: Any) -> Any:
        """The synchronous Python API: ``engine.run("ner", texts=[...])`` -> the operation's result."""
        return self.execute(self.prepare(name, query if query is not None else self.query(name, **fields)))

    def execute(self, job: Job) -> Any:
        """Run a job here and now: its rows sorted by length, in batches of at most ``batch_tokens`` and at most
        ``MAX_PADDING`` padding; outputs back in row order."""
        outputs: list[Any] = [None] * len(job.seqs)
        for batch in plan_batches([len(s) for s in job.seqs], self.limits.batch_tokens, max_padding=MAX_PADDING):
            for k, out in zip(batch, self.run_batch(job.task, [job.seqs[k] for k in batch])):
                outputs[k] = out
        return self.finish(job, outputs)

    # -- one batch ----------------------------------------------------------------------------

    def run_batch(self, task: str, seqs: list[Seq]) -> list[Any]:
        """Pad, run ``task``'s graph, post-process: one value per row (NER: entities; similarity: a vector)."""
        ids, mask = pad_batch([s.ids for s in seqs], pad_id=self.tokenizer.pad_id)  # (B, T) each
        try:
            out = self.runtime.run(task, self._feeds[task](ids, mask))
        except ServiceError:
            raise
        except Exception as e:
            raise InferenceError(f"{task} inference failed on a batch of {ids.shape}: {e}") from e
        return self._tasks[task].postprocess(out, seqs)

    # -- bundle facts ---------------------------------------------------------------------------

    @property
    def normalize(self) -> Normalize:
        """What the tokenizer normalises before encoding (the manifest's, or the server's override)."""
        return getattr(self.tokenizer.normalizer, "spec", None) or Normalize()

    @property
    def tasks(self) -> list[str]:
        return list(self._tasks)

    def settings(self) -> dict[str, Any]:
        """The effective task settings (e.g. NER windows), for a resumed run's fingerprint."""
        return {k: v for task in self._tasks.values() for k, v in task.settings().items()}

    def warm_up(self) -> float:
        """Run every graph once (first-run allocations, kernel selection); return the seconds it took."""
        t0 = time.perf_counter()
        for task in self._tasks.values():
            for name, fields in task.warm_up:
                self.run(name, **fields)
        return time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "format_version": m.format_version,
            "provider": getattr(self.runtime, "provider", "unknown"),
            "normalize": self.normalize.model_dump(),
            "precision": dict(getattr(self.runtime, "precision", {})),
            "tasks": {name: task.info() for name, task in self._tasks.items()},
            "provenance": m.provenance.model_dump(mode="json"),
            "limits": {
                "max_items": self.limits.max_items,
                "max_chars": self.limits.max_chars,
                "threshold_range": [self.limits.threshold_min, self.limits.threshold_max],
                "max_entities": self.limits.max_entities,
                "batch_tokens": self.limits.batch_tokens,
            },
        }


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_FEEDS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "input_ids": lambda ids, mask: ids,
    "attention_mask": lambda ids, mask: mask,
    "token_type_ids": lambda ids, mask: np.zeros_like(ids),
}


def _feed_builder(task: str, names: list[str]) -> Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]:
    """Feeds by the graph's own input names (read from the session, not assumed)."""
    unknown = [n for n in names if n not in _FEEDS]
    if unknown:
        raise BundleError(
            f"{task} graph has inputs {unknown} this service cannot fill (knows {sorted(_FEEDS)})"
        )
    return lambda ids, mask: {n: _FEEDS[n](ids, mask) for n in names}


__all__ = ["Engine", "Job", "Limits", "Seq"]
