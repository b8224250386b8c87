"""Similarity: sentence vectors (``embed``), cosine scores of pairs or of candidates against a query
(``similarity``), and documents reranked against a query in the Cohere / Jina shape (``rerank``), from
the bundle's pooled (and, when the bundle has it, whitened), L2-normalised vectors (cosine = dot).

``rerank`` runs the same bi-encoder: the query and each document are encoded *separately* and scored
by cosine, so document vectors could be cached or indexed; a cross-encoder reads query and document
together in one pass (usually more accurate, and a model run per pair). The OpenAI-compatible
``/v1/embeddings`` (:mod:`service.http.openai`) runs ``embed``.

The encoder was trained on sentences of at most ``max_length`` tokens, and a mean of window vectors
is not a vector the model was trained to produce, so a longer text is **truncated** to its first
``max_length - 2`` tokens, and every result says so (``truncated`` flags), never silently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field

from service.errors import InferenceError, InvalidRequest, OutOfRange, ServiceError
from service.jobs import Job, Limits, Seq
from service.tasks.base import (
    WARM_UP_TEXT, Body, Integer, Operation, ScoreSpec, Task, constrained, items_type, register, text_type,
)  # fmt: skip
from service.validate import check_items, check_number, check_text, check_texts

# --------------------------------------------------------------------------------------------
# Queries, results, responses
# --------------------------------------------------------------------------------------------


class SimilarityQuery(Body):
    pairs: list[Annotated[list[str], Field(min_length=2, max_length=2)]] | None = Field(
        None, description="[[a, b], ...]: one cosine score per pair"
    )
    query: str | None = Field(None, description="rank candidates against this text")
    candidates: list[str] | None = None
    top_k: Integer | None = Field(None, description="how many ranked candidates to return; default all")

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        """Either ``pairs`` (the rest null or absent), or ``query`` and ``candidates`` (+ ``top_k``)."""
        text = text_type(limits)
        pair = Annotated[list[text], Field(min_length=2, max_length=2)]
        pairs = constrained(cls, {"pairs": items_type(pair, limits), "query": None, "candidates": None,
                                  "top_k": None}, required=["pairs"], title="pairs")  # fmt: skip
        rank = constrained(cls, {"pairs": None, "query": text, "candidates": items_type(text, limits),
                                 "top_k": Annotated[int, Field(ge=1)] | None},
                           required=["query", "candidates"], title="query and candidates")  # fmt: skip
        return {"title": cls.__name__, "type": "object", "oneOf": [pairs, rank]}

    def form(self) -> str:
        """'pairs' or 'rank'; both forms at once, or neither, is an error naming the fields."""
        has_pairs = self.pairs is not None
        has_rank = self.query is not None or self.candidates is not None or self.top_k is not None
        if has_pairs == has_rank:
            which = "both" if has_pairs else "neither"
            raise InvalidRequest(
                f"give either 'pairs', or 'query' and 'candidates' (+ 'top_k'); got {which}",
                field="pairs|query,candidates",
            )
        if has_rank and (self.query is None or self.candidates is None):
            missing = "query" if self.query is None else "candidates"
            raise InvalidRequest(f"'{missing}' is required with 'query' / 'candidates'", field=missing)
        return "pairs" if has_pairs else "rank"


class EmbedQuery(Body):
    texts: list[str]

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        return constrained(cls, {"texts": items_type(text_type(limits), limits)})


class DocumentIn(Body):
    text: str

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        return constrained(cls, {"text": text_type(limits)})


class RerankQuery(Body):
    """Cohere / Jina rerank request."""

    query: str = Field(description="the text the documents are ranked against")
    documents: list[str | DocumentIn] = Field(description='strings, or {"text": ...} objects')
    top_n: Integer | None = Field(None, description="how many of the best documents to return; default all")
    return_documents: bool = Field(False, description="echo each document's text in its result")
    model: str | None = Field(None, description="accepted for compatibility and ignored: the served bundle answers")

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        text = text_type(limits)
        schema = constrained(cls, {"query": text, "documents": items_type(text | dict[str, Any], limits),
                                   "top_n": Annotated[int, Field(ge=1)] | None})  # fmt: skip
        schema["properties"]["documents"]["items"]["anyOf"][1] = DocumentIn.contract(limits)
        return schema


@dataclass(frozen=True)
class EmbedResult:
    vectors: np.ndarray  # (n, dim) float32, L2-normalised: cosine = dot
    truncated: list[bool]
    tokens: list[int] = ()  # per text: tokens the model ran ([CLS] and [SEP] included, after truncation)


@dataclass(frozen=True)
class RerankResult:
    results: list[Ranked]  # best first, ties by index
    tokens: int  # tokens the model ran for the query and every distinct document
    return_documents: bool = False


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


class PairsResponse(BaseModel):
    scores: list[float]
    truncated: list[bool] = Field(description="per pair: a or b was cut to the model's max_length")


class RankedOut(BaseModel):
    index: int
    text: str
    score: float
    truncated: bool


class RankResponse(BaseModel):
    results: list[RankedOut] = Field(description="best first")
    query_truncated: bool


class DocumentOut(BaseModel):
    text: str


class RerankItem(BaseModel):
    index: int = Field(description="the document's position in the request")
    relevance_score: float = Field(description="cosine of query and document vectors, in [-1, 1] (not a probability)")
    document: DocumentOut | None = Field(None, description="with return_documents")
    truncated: bool = Field(description="the document was cut to the model's max_length tokens")


class RerankUsage(BaseModel):
    total_tokens: int = Field(description="tokens the model ran ([CLS] and [SEP] included)")


class RerankResponse(BaseModel):
    results: list[RerankItem] = Field(description="best first")
    usage: RerankUsage


class EmbedResponse(BaseModel):
    vectors: list[list[float]] = Field(description="L2-normalised (whitened when the bundle is): cosine = dot")
    dim: int
    truncated: list[bool] = Field(description="per text: cut to the model's max_length tokens")


# --------------------------------------------------------------------------------------------
# Rows: one per distinct text
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _State:
    unique: list[str]  # one row each
    truncated: list[bool]
    lengths: list[int]  # tokens run per unique text
    form: str  # "embed", "pairs", "rank"
    texts: list[str] = ()  # embed
    pairs: list[tuple[str, str]] = ()
    query: str = ""
    candidates: list[str] = ()
    top_k: int | None = None
    return_documents: bool = False  # rerank


def _job(task: SimilarityServing, op: str, rows: list[str], **state: Any) -> Job:
    """One row per distinct text, cut to ``max_length`` tokens ([CLS] first max_length-2 tokens [SEP])."""
    t0 = time.perf_counter()
    unique = list(dict.fromkeys(rows))
    L = task.spec.max_length
    sep = np.array([task.tokenizer.sep_id], dtype=np.int64)
    seqs, truncated = [], []
    for ids in task.tokenizer.encode_ids(unique):  # ids only: no offsets needed here
        cut = len(ids) > L
        seqs.append(Seq(np.concatenate([ids[: L - 1], sep]) if cut else ids))
        truncated.append(cut)
    lengths = [len(s) for s in seqs]
    return Job(op, "similarity", seqs, _State(unique, truncated, lengths, **state),
               tokenize_s=time.perf_counter() - t0)  # fmt: skip


def _by_text(job: Job, outputs: list[np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    s: _State = job.state
    return dict(zip(s.unique, outputs)), dict(zip(s.unique, s.truncated))


# --------------------------------------------------------------------------------------------
# Operations and the task
# --------------------------------------------------------------------------------------------


class Similarity(Operation):
    """Either ``pairs`` -> ``scores``, or ``query`` + ``candidates`` (+ ``top_k``) -> ranked ``results``."""

    name = task = "similarity"
    query = SimilarityQuery
    response = PairsResponse | RankResponse
    summary = "Cosine similarity of pairs, or candidates ranked against a query"
    errors = (OutOfRange,)
    score = ScoreSpec(items="pairs", fields=("a", "b"), help="score of pairs (a, b)")

    def prepare(self, task: SimilarityServing, q: SimilarityQuery) -> Job:
        limits = task.limits
        if q.form() == "pairs":
            checked = []
            for k, pair in enumerate(check_items(q.pairs, "pairs", limits)):
                if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
                    raise InvalidRequest(f"pairs[{k}] must be a list of two strings [a, b]", field=f"pairs[{k}]")
                checked.append(tuple(check_text(t, f"pairs[{k}][{i}]", limits) for i, t in enumerate(pair)))
            return _job(task, self.name, [t for pair in checked for t in pair], form="pairs", pairs=checked)
        query = check_text(q.query, "query", limits)
        candidates = check_texts(q.candidates, "candidates", limits)
        top_k = q.top_k
        if top_k is not None:
            top_k = int(check_number(top_k, "top_k", integer=True))
            if top_k < 1:
                raise OutOfRange(f"top_k must be >= 1, got {top_k}", field="top_k", limit=1)
        return _job(task, self.name, [query, *candidates], form="rank", query=query, candidates=candidates,
                    top_k=top_k)  # fmt: skip

    def finish(self, task: SimilarityServing, job: Job, outputs: list[np.ndarray]) -> PairsResult | RankResult:
        vec, cut = _by_text(job, outputs)
        s: _State = job.state
        if s.form == "pairs":
            return PairsResult(
                scores=[float(np.dot(vec[a], vec[b])) for a, b in s.pairs],
                truncated=[cut[a] or cut[b] for a, b in s.pairs],
            )
        scores = np.stack([vec[c] for c in s.candidates]) @ vec[s.query]  # (n,)
        order = sorted(range(len(s.candidates)), key=lambda k: (-scores[k], k))[: s.top_k]
        results = [Ranked(k, s.candidates[k], float(scores[k]), cut[s.candidates[k]]) for k in order]
        return RankResult(results, cut[s.query])

    def render(self, result: PairsResult | RankResult) -> PairsResponse | RankResponse:
        if isinstance(result, PairsResult):
            return PairsResponse.model_construct(scores=result.scores, truncated=result.truncated)
        results = [RankedOut.model_construct(index=r.index, text=r.text, score=r.score, truncated=r.truncated)
                   for r in result.results]  # fmt: skip
        return RankResponse.model_construct(results=results, query_truncated=result.query_truncated)

    def records(self, result: PairsResult, limits: Limits) -> list[dict[str, Any] | ServiceError]:
        return [{"score": s, "truncated": t} for s, t in zip(result.scores, result.truncated)]


class Embed(Operation):
    """Whitened, L2-normalised sentence vectors (cosine = dot product)."""

    name = "embed"
    task = "similarity"
    query = EmbedQuery
    response = EmbedResponse
    summary = "Sentence vectors"
    score = ScoreSpec(items="texts", vectors=True, help="vectors")

    def prepare(self, task: SimilarityServing, q: EmbedQuery) -> Job:
        texts = check_texts(q.texts, "texts", task.limits)
        return _job(task, self.name, texts, form="embed", texts=texts)

    def finish(self, task: SimilarityServing, job: Job, outputs: list[np.ndarray]) -> EmbedResult:
        vec, cut = _by_text(job, outputs)
        texts = job.state.texts
        length = dict(zip(job.state.unique, job.state.lengths))
        return EmbedResult(np.stack([vec[t] for t in texts]), [cut[t] for t in texts], [length[t] for t in texts])

    def render(self, result: EmbedResult) -> EmbedResponse:
        return EmbedResponse.model_construct(
            vectors=result.vectors.tolist(), dim=int(result.vectors.shape[1]), truncated=result.truncated
        )

    def records(self, result: EmbedResult, limits: Limits) -> list[dict[str, Any] | ServiceError]:
        return [{"vector": v, "truncated": t} for v, t in zip(result.vectors, result.truncated)]


class Rerank(Operation):
    """Documents ranked against a query by cosine (Cohere / Jina shape). A bi-encoder: query and
    documents are encoded separately, not read together as a cross-encoder reads them."""

    name = "rerank"
    task = "similarity"
    query = RerankQuery
    response = RerankResponse
    summary = "Rerank documents against a query (Cohere / Jina shape; bi-encoder cosine)"
    errors = (OutOfRange,)

    def prepare(self, task: SimilarityServing, q: RerankQuery) -> Job:
        limits = task.limits
        query = check_text(q.query, "query", limits)
        docs = []
        for k, d in enumerate(check_items(q.documents, "documents", limits)):
            text = d.get("text") if isinstance(d, dict) and set(d) == {"text"} else getattr(d, "text", d)
            docs.append(check_text(text, f"documents[{k}]" + ("" if isinstance(d, str) else ".text"), limits))
        top_n = q.top_n
        if top_n is not None:
            top_n = int(check_number(top_n, "top_n", integer=True))
            if top_n < 1:
                raise OutOfRange(f"top_n must be >= 1, got {top_n}", field="top_n", limit=1)
        if not isinstance(q.return_documents, bool):
            raise InvalidRequest("return_documents must be true or false", field="return_documents")
        return _job(task, self.name, [query, *docs], form="rank", query=query, candidates=docs, top_k=top_n,
                    return_documents=q.return_documents)  # fmt: skip

    def finish(self, task: SimilarityServing, job: Job, outputs: list[np.ndarray]) -> RerankResult:
        ranked = Similarity().finish(task, job, outputs)
        return RerankResult(ranked.results, sum(job.state.lengths), job.state.return_documents)

    def render(self, res: RerankResult) -> RerankResponse:
        with_docs = res.return_documents
        items = [RerankItem.model_construct(index=r.index, relevance_score=r.score, truncated=r.truncated,
                                            document=DocumentOut.model_construct(text=r.text) if with_docs else None)
                 for r in res.results]  # fmt: skip
        return RerankResponse.model_construct(results=items, usage=RerankUsage.model_construct(total_tokens=res.tokens))


@register
class SimilarityServing(Task):
    kind = "similarity"
    operations = (Similarity(), Embed(), Rerank())
    warm_up = (("embed", {"texts": [WARM_UP_TEXT, WARM_UP_TEXT[:2]]}),)

    def postprocess(self, out: np.ndarray, seqs: Sequence[Seq]) -> list[np.ndarray]:
        if out.ndim != 2 or out.shape[0] != len(seqs):
            raise InferenceError(f"similarity graph returned shape {out.shape} for {len(seqs)} rows")
        return list(out)  # (dim,) rows

    def info(self) -> dict[str, Any]:
        s = self.spec
        return {
            "dim": s.dim, "pooling": s.pooling, "whitening": s.whitening, "max_length": s.max_length,
            "long_texts": "truncated to max_length tokens (reported per text as 'truncated')", "metrics": s.metrics,
        }  # fmt: skip

    @property
    def vector_dim(self) -> int:
        return self.spec.dim
