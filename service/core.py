"""Core: validate, tokenize, batch by token budget, run, decode. No HTTP here.

The HTTP app and the batch-scoring CLI both call this layer. Every request becomes a :class:`Job`:
the sequences (model rows) to run plus a ``finish`` that assembles the answer from their outputs.
Jobs are run either here, synchronously (:meth:`Engine.execute`: batches by token budget, for the
CLI and tests), or by :class:`service.batching.Batcher`, which mixes the sequences of concurrent
requests into shared batches. Both go through :meth:`Engine.run_batch`, so batching cannot change a
result beyond float rounding of a differently padded batch. Decoding is ``models.spans.decode_batch``
over the whole batch (rows of one batch may carry different thresholds; each request's entity budget
is charged before any entity is built).

Long texts:

* NER: a text longer than the window (``max_length`` tokens, [CLS]/[SEP] included) is cut into
  windows ``stride`` tokens apart, from the encoding it already has (``Tokenizer.windows``: each
  text is tokenized once); spans from every window carry offsets into the original text and are
  merged (``merge_entities``: an entity seen by two windows is reported once, with its best
  score). Nothing is ever truncated. The decoding mode (``decode``: the bundle's, or per request)
  is applied to each text after merging: "nested" lists every span, "flat" keeps greedy
  non-overlapping ones (``models.spans.non_overlapping``).
* Similarity / embeddings: the encoder was trained on sentences of at most ``max_length`` tokens,
  and a mean of window vectors is not a vector the model was trained to produce, so a longer text
  is **truncated** to its first ``max_length - 2`` tokens — and every result says so
  (``truncated`` flags), never silently.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from models.bundle import BundleError, Manifest, load_manifest
from models import spans
from models.spans import Decode, Entity, apply_decode, decode_batch, merge_entities
from models.text import Tokenizer, pad_batch
from service.errors import (
    EmptyInput,
    InferenceError,
    InvalidRequest,
    OutOfRange,
    ServiceError,
    TaskUnavailable,
    TextTooLong,
    TooManyEntities,
    TooManyItems,
)
from service.runtime import Runtime

log = logging.getLogger(__name__)

R = TypeVar("R")
WARM_UP_TEXT = "北京 warm-up 测试"


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much one batch may hold."""

    max_items: int = 64
    max_chars: int = 10_000
    threshold_min: float = -10.0
    threshold_max: float = 10.0
    max_entities: int = 20_000  # per request: a low threshold must not flood memory
    batch_tokens: int = 8192  # padded cost of a batch: longest sequence x number of sequences


@dataclass(eq=False)
class EntityBudget:
    """How many entities one NER request may still produce; shared by the rows (windows) of the request.

    Checked *before* entities are built (a vectorised count), so a very low threshold on long texts
    cannot fill memory: the request fails with :class:`TooManyEntities` instead.
    """

    limit: int
    used: int = 0
    exceeded: bool = False


@dataclass(frozen=True, eq=False)
class Seq:
    """One model row: token ids and, for NER, what decoding needs (offsets into ``text``, threshold)."""

    ids: np.ndarray  # (n,) int64, [CLS] ... [SEP]
    offsets: np.ndarray | None = None  # (n, 2) char offsets into text, specials (-1, -1)
    text: str = ""
    threshold: float = 0.0
    budget: EntityBudget | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(eq=False)
class Job(Generic[R]):
    """A validated, tokenized request: rows to run on ``task``'s graph and how to assemble the answer."""

    task: str
    seqs: list[Seq]
    finish: Callable[[list[Any]], R]  # outputs of run_batch, one per seq, in seq order -> result
    tokenize_s: float = 0.0


@dataclass(frozen=True)
class NerResult:
    entities: list[list[Entity]]  # per input text, sorted by (start, end, label)


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (n, dim) float32, L2-normalised: cosine = dot
    truncated: list[bool]


@dataclass(frozen=True)
class PairsResult:
    scores: list[float]
    truncated: list[bool]  # per pair: a or b was cut to max_length


@dataclass(frozen=True)
class Ranked:
    index: int
    text: str
    score: float
    truncated: bool


@dataclass(frozen=True)
class RankResult:
    results: list[Ranked]  # best first, ties by index
    query_truncated: bool


# --------------------------------------------------------------------------------------------
# Batching by token budget
# --------------------------------------------------------------------------------------------


def padded_cost(lengths: Sequence[int]) -> int:
    """What a batch costs: every row is padded to the longest."""
    return max(lengths, default=0) * len(lengths)


def plan_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group indices into batches sorted by length (longest first), each costing at most ``budget``.

    A sequence longer than the budget on its own still runs, alone.
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    batches: list[list[int]] = []
    current: list[int] = []
    for k in order:
        if current and lengths[current[0]] * (len(current) + 1) > budget:  # current[0] is its longest
            batches.append(current)
            current = []
        current.append(k)
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------------------------
# Validation (the same checks for HTTP bodies and CLI lines: both may hold anything)
# --------------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def check_items(value: object, field: str, limits: Limits) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidRequest(f"{field} must be a list, got {_type_name(value)}", field=field)
    if not value:
        raise EmptyInput(f"{field} is empty: give at least one item", field=field)
    if len(value) > limits.max_items:
        raise TooManyItems(
            f"{field} has {len(value)} items; at most {limits.max_items} per request",
            field=field,
            limit=limits.max_items,
        )
    return list(value)


def check_text(value: object, field: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, got {_type_name(value)}", field=field)
    if len(value) > limits.max_chars:
        raise TextTooLong(
            f"{field} has {len(value)} characters; at most {limits.max_chars} per text",
            field=field,
            limit=limits.max_chars,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(
            f"{field} is not valid Unicode ({e.reason} at character {e.start})", field=field
        ) from None
    return value


def check_texts(value: object, field: str, limits: Limits) -> list[str]:
    return [check_text(t, f"{field}[{k}]", limits) for k, t in enumerate(check_items(value, field, limits))]


def check_decode(value: object, field: str = "decode") -> Decode:
    """One of :data:`models.spans.DECODES`, else :class:`InvalidRequest` naming the field and the choices."""
    try:
        return spans.check_decode(value)
    except ValueError:
        raise InvalidRequest(
            f"{field} must be one of {', '.join(map(repr, spans.DECODES))}, got {value!r}", field=field
        ) from None


def _check_number(value: object, field: str, *, integer: bool) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok:
        raise InvalidRequest(
            f"{field} must be {'an integer' if integer else 'a number'}, got {_type_name(value)}", field=field
        )
    if not math.isfinite(value):
        raise OutOfRange(f"{field} must be finite", field=field)
    return value


# --------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------


class Engine:
    """Tokenizer + runtime + manifest: validates, tokenizes, runs and decodes (synchronously).

    ``ner`` / ``embed`` / ``similarity_pairs`` / ``rank`` are the synchronous API (the batch CLI);
    the ``prepare_*`` methods + :meth:`run_batch` are what the server's batcher uses.
    """

    def __init__(
        self,
        runtime: Runtime,
        tokenizer: Tokenizer,
        manifest: Manifest,
        *,
        limits: Limits = Limits(),
        ner_max_length: int | None = None,
        ner_stride: int | None = None,
    ) -> None:
        self.runtime, self.tokenizer, self.manifest, self.limits = runtime, tokenizer, manifest, limits
        self._feeds = {task: _feed_builder(task, runtime.inputs(task)) for task in manifest.tasks}
        self.ner_max_length = self.ner_stride = 0
        if manifest.ner is not None:
            self.ner_max_length, self.ner_stride = _windows(manifest, ner_max_length, ner_stride)
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
        ner_max_length: int | None = None,
        ner_stride: int | None = None,
        **runtime_options: Any,
    ) -> Engine:
        """Load a bundle from disk: manifest (validated, hashes checked), tokenizer, ONNX sessions."""
        from service.runtime import OnnxRuntime

        bundle_dir = Path(bundle_dir)
        manifest = load_manifest(bundle_dir)
        tokenizer = Tokenizer.load(bundle_dir / manifest.tokenizer, lowercase=manifest.lowercase)
        runtime = OnnxRuntime(bundle_dir, manifest, **runtime_options)
        return cls(
            runtime, tokenizer, manifest, limits=limits, ner_max_length=ner_max_length, ner_stride=ner_stride
        )

    @classmethod
    def from_settings(cls, settings) -> Engine:
        """An engine as ``service.settings.Settings`` describe it (the server and the CLI)."""
        s = settings
        limits = Limits(
            max_items=s.max_items,
            max_chars=s.max_chars,
            threshold_min=s.threshold_min,
            threshold_max=s.threshold_max,
            max_entities=s.max_entities,
            batch_tokens=s.batch_tokens,
        )
        return cls.load(
            s.bundle_dir,
            limits=limits,
            ner_max_length=s.ner_max_length,
            ner_stride=s.ner_stride,
            provider=s.provider,
            allow_cpu_fallback=s.allow_cpu_fallback,
            precision=s.precision,
            intra_op_threads=s.intra_op_threads,
            inter_op_threads=s.inter_op_threads,
        )

    # -- synchronous API --------------------------------------------------------------------

    def ner(
        self, texts: Sequence[str], threshold: float | None = None, decode: Decode | None = None
    ) -> NerResult:
        return self.execute(self.prepare_ner(texts, threshold, decode))

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        return self.execute(self.prepare_embed(texts))

    def similarity_pairs(self, pairs: Sequence[Sequence[str]]) -> PairsResult:
        return self.execute(self.prepare_pairs(pairs))

    def rank(self, query: str, candidates: Sequence[str], top_k: int | None = None) -> RankResult:
        return self.execute(self.prepare_rank(query, candidates, top_k))

    def execute(self, job: Job[R]) -> R:
        """Run a job here and now: its rows sorted by length, in batches of at most ``batch_tokens``."""
        outputs: list[Any] = [None] * len(job.seqs)
        for batch in plan_batches([len(s) for s in job.seqs], self.limits.batch_tokens):
            for k, out in zip(batch, self.run_batch(job.task, [job.seqs[k] for k in batch])):
                outputs[k] = out
        return job.finish(outputs)

    # -- one batch ----------------------------------------------------------------------------

    def run_batch(self, task: str, seqs: Sequence[Seq]) -> list[Any]:
        """Pad, run, post-process one batch: NER -> entity list per row; similarity -> vector per row."""
        ids, mask = pad_batch([s.ids for s in seqs], pad_id=self.tokenizer.pad_id)  # (B, T) each
        try:
            out = self.runtime.run(task, self._feeds[task](ids, mask))
        except ServiceError:
            raise
        except Exception as e:
            raise InferenceError(f"{task} inference failed on a batch of {ids.shape}: {e}") from e
        if task == "ner":
            return self._decode(out, seqs)
        if out.ndim != 2 or out.shape[0] != len(seqs):
            raise InferenceError(f"similarity graph returned shape {out.shape} for {len(seqs)} rows")
        return list(out)  # (dim,) rows

    def _decode(self, scores: np.ndarray, seqs: Sequence[Seq]) -> list[list[Entity]]:
        """Every span above its row's threshold, on real token boundaries (``models.spans.decode_batch``);
        rows are counted first and charged to their request's entity budget."""
        labels = self.manifest.ner.labels
        B, T = len(seqs), max(len(s) for s in seqs)
        if scores.shape != (B, len(labels), T, T):
            raise InferenceError(
                f"NER graph returned shape {scores.shape}, expected {(B, len(labels), T, T)}"
            )
        return decode_batch(
            scores,
            offsets_list=[s.offsets for s in seqs],
            labels=labels,
            texts=[s.text for s in seqs],
            threshold=[s.threshold for s in seqs],  # requests sharing a batch may ask for different ones
            admit=lambda counts: self._charge(seqs, counts.tolist()),
        )

    @staticmethod
    def _charge(seqs: Sequence[Seq], counts: list[int]) -> np.ndarray:
        """Charge each row's entity count to its request's budget; False for rows of requests over it."""
        keep = np.ones(len(seqs), dtype=bool)
        for k, (s, n) in enumerate(zip(seqs, counts)):
            if s.budget is not None:
                s.budget.used += n
                s.budget.exceeded |= s.budget.used > s.budget.limit
                keep[k] = not s.budget.exceeded
        return keep

    # -- NER ----------------------------------------------------------------------------------

    def prepare_ner(
        self, texts: Sequence[str], threshold: float | None = None, decode: Decode | None = None
    ) -> Job[NerResult]:
        """``threshold`` and ``decode`` ("nested" | "flat") default to the bundle's."""
        spec = self._task("ner")
        texts = check_texts(texts, "texts", self.limits)
        decode = spec.decode if decode is None else check_decode(decode)
        if threshold is None:
            threshold = spec.threshold
        else:
            threshold = float(_check_number(threshold, "threshold", integer=False))
            lo, hi = self.limits.threshold_min, self.limits.threshold_max
            if not lo <= threshold <= hi:
                raise OutOfRange(
                    f"threshold {threshold} is outside [{lo}, {hi}]",
                    field="threshold",
                    limit=hi if threshold > hi else lo,
                )
        t0 = time.perf_counter()
        unique = list(dict.fromkeys(texts))
        budget = EntityBudget(self.limits.max_entities)
        seqs, owner = [], []
        for u, (text, enc) in enumerate(zip(unique, self.tokenizer.encode_batch(unique))):
            if len(enc) <= self.ner_max_length:
                rows = [Seq(enc.ids, enc.offsets, text, threshold, budget)]
            else:  # cut from this encoding: the text is tokenized once
                windows = self.tokenizer.windows(enc, max_length=self.ner_max_length, stride=self.ner_stride)
                rows = [Seq(w.ids, w.offsets, text, threshold, budget) for w in windows]
            seqs += rows
            owner += [u] * len(rows)

        def finish(outputs: list[list[Entity]]) -> NerResult:
            if budget.exceeded:
                raise TooManyEntities(
                    f"threshold {threshold} yields more than {budget.limit} entities for this request; "
                    "raise the threshold or send fewer / shorter texts",
                    field="threshold",
                    limit=budget.limit,
                )
            groups: list[list[list[Entity]]] = [[] for _ in unique]
            for u, ents in zip(owner, outputs):
                groups[u].append(ents)
            merged = {
                t: apply_decode(g[0] if len(g) == 1 else merge_entities(g), decode)
                for t, g in zip(unique, groups)
            }
            return NerResult([list(merged[t]) for t in texts])

        return Job("ner", seqs, finish, tokenize_s=time.perf_counter() - t0)

    # -- similarity -----------------------------------------------------------------------------

    def _sim_rows(self, unique: list[str]) -> tuple[list[Seq], list[bool]]:
        """One row per text, cut to ``max_length`` tokens ([CLS] first max_length-2 tokens [SEP])."""
        L = self._task("similarity").max_length
        sep = np.array([self.tokenizer.sep_id], dtype=np.int64)
        seqs, truncated = [], []
        for ids in self.tokenizer.encode_ids(unique):  # ids only: no offsets needed here
            cut = len(ids) > L
            seqs.append(Seq(np.concatenate([ids[: L - 1], sep]) if cut else ids))
            truncated.append(cut)
        return seqs, truncated

    def _sim_job(
        self, texts: list[str], finish: Callable[[dict[str, np.ndarray], dict[str, bool]], R]
    ) -> Job[R]:
        t0 = time.perf_counter()
        unique = list(dict.fromkeys(texts))
        seqs, truncated = self._sim_rows(unique)

        def run_finish(outputs: list[np.ndarray]) -> R:
            return finish(dict(zip(unique, outputs)), dict(zip(unique, truncated)))

        return Job("similarity", seqs, run_finish, tokenize_s=time.perf_counter() - t0)

    def prepare_embed(self, texts: Sequence[str]) -> Job[EmbedResult]:
        self._task("similarity")
        texts = check_texts(texts, "texts", self.limits)

        def finish(vec: dict[str, np.ndarray], cut: dict[str, bool]) -> EmbedResult:
            return EmbedResult(np.stack([vec[t] for t in texts]), [cut[t] for t in texts])

        return self._sim_job(texts, finish)

    def prepare_pairs(self, pairs: Sequence[Sequence[str]]) -> Job[PairsResult]:
        self._task("similarity")
        checked = []
        for k, pair in enumerate(check_items(pairs, "pairs", self.limits)):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise InvalidRequest(f"pairs[{k}] must be a list of two strings [a, b]", field=f"pairs[{k}]")
            checked.append(tuple(check_text(t, f"pairs[{k}][{i}]", self.limits) for i, t in enumerate(pair)))

        def finish(vec: dict[str, np.ndarray], cut: dict[str, bool]) -> PairsResult:
            return PairsResult(
                scores=[float(np.dot(vec[a], vec[b])) for a, b in checked],
                truncated=[cut[a] or cut[b] for a, b in checked],
            )

        return self._sim_job([t for pair in checked for t in pair], finish)

    def prepare_rank(
        self, query: str, candidates: Sequence[str], top_k: int | None = None
    ) -> Job[RankResult]:
        self._task("similarity")
        query = check_text(query, "query", self.limits)
        candidates = check_texts(candidates, "candidates", self.limits)
        if top_k is not None:
            top_k = int(_check_number(top_k, "top_k", integer=True))
            if top_k < 1:
                raise OutOfRange(f"top_k must be >= 1, got {top_k}", field="top_k", limit=1)

        def finish(vec: dict[str, np.ndarray], cut: dict[str, bool]) -> RankResult:
            scores = np.stack([vec[c] for c in candidates]) @ vec[query]  # (n,)
            order = sorted(range(len(candidates)), key=lambda k: (-scores[k], k))[:top_k]
            results = [Ranked(k, candidates[k], float(scores[k]), cut[candidates[k]]) for k in order]
            return RankResult(results, cut[query])

        return self._sim_job([query, *candidates], finish)

    # -- bundle facts ---------------------------------------------------------------------------

    def _task(self, task: str):
        spec = self.manifest.tasks.get(task)
        if spec is None:
            raise TaskUnavailable(
                f"the loaded bundle {self.manifest.name!r} has no {task} model (has: {', '.join(self.manifest.tasks)})"
            )
        return spec

    @property
    def tasks(self) -> list[str]:
        return list(self.manifest.tasks)

    def warm_up(self) -> float:
        """Run every graph once (first-run allocations, kernel selection); return the seconds it took."""
        t0 = time.perf_counter()
        if self.manifest.ner is not None:
            self.execute(self.prepare_ner([WARM_UP_TEXT, WARM_UP_TEXT[:2]]))
        if self.manifest.similarity is not None:
            self.execute(self.prepare_embed([WARM_UP_TEXT, WARM_UP_TEXT[:2]]))
        return time.perf_counter() - t0

    def info(self) -> dict[str, Any]:
        m = self.manifest
        tasks: dict[str, Any] = {}
        if m.ner is not None:
            tasks["ner"] = {
                "labels": list(m.ner.labels),
                "head": m.ner.head,
                "threshold": m.ner.threshold,
                "decode": m.ner.decode,
                "max_length": self.ner_max_length,
                "stride": self.ner_stride,
                "long_texts": "sliding windows, entities merged",
                "metrics": m.ner.metrics,
            }
        if m.similarity is not None:
            tasks["similarity"] = {
                "dim": m.similarity.dim,
                "pooling": m.similarity.pooling,
                "whitening": m.similarity.whitening,
                "max_length": m.similarity.max_length,
                "long_texts": "truncated to max_length tokens (reported per text as 'truncated')",
                "metrics": m.similarity.metrics,
            }
        return {
            "name": m.name,
            "format_version": m.format_version,
            "provider": getattr(self.runtime, "provider", "unknown"),
            "precision": dict(getattr(self.runtime, "precision", {})),
            "tasks": tasks,
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


def _windows(manifest: Manifest, max_length: int | None, stride: int | None) -> tuple[int, int]:
    """NER window length and stride: the bundle's, or smaller ones from the settings."""
    spec = manifest.ner
    L = spec.max_length if max_length is None else max_length
    if not 3 <= L <= spec.max_length:
        raise ValueError(f"ner_max_length {L} must be in [3, the bundle's {spec.max_length}]")
    width = L - 2
    if stride is None:
        stride = spec.stride if spec.stride <= width else max(1, width // 2)
    if not 1 <= stride <= width:
        raise ValueError(f"ner_stride {stride} must be in [1, ner_max_length - 2 = {width}]")
    return L, stride


__all__ = [
    "EmbedResult",
    "Engine",
    "Job",
    "Limits",
    "NerResult",
    "PairsResult",
    "RankResult",
    "Ranked",
    "Seq",
    "check_decode",
    "check_items",
    "check_text",
    "check_texts",
    "padded_cost",
    "plan_batches",
]
