"""NER: texts -> nested (or flat) entities with character offsets into the original text.

A text longer than the window (``max_length`` tokens, [CLS]/[SEP] included) is cut into windows
``stride`` tokens apart, from the encoding it already has (``Tokenizer.windows``: each text is
tokenized once); spans from every window carry offsets into the original text and are merged
(``merge_entities``: an entity seen by two windows is reported once, with its best score). Nothing
is ever truncated. The decoding mode (``decode``: the bundle's, or per request) is applied to each
text after merging: "nested" lists every span, "flat" keeps greedy non-overlapping ones.

A user lexicon (:mod:`service.lexicon`: the bundle's ``lexicon.tsv``, the server's ``--lexicon``, the
request's ``lexicon`` field) is merged into each text's entities after the windows are merged and
before decoding: blocked terms removed, added terms in, each entity saying its ``source``.

Decoding runs on the inference thread over the whole batch (``models.spans.decode_batch``; rows of
one batch may carry different thresholds). Each request's entity budget is charged before any
entity is built, so a very low threshold on long texts fails with :class:`TooManyEntities` instead
of filling memory.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from models import spans
from models.bundle import NerTask
from models.spans import Decode, Entity, apply_decode, decode_batch, merge_entities
from service import lexicon as lex
from service.errors import InferenceError, InvalidRequest, OutOfRange, ServiceError, TooManyEntities, TooManyItems
from service.jobs import Job, Limits, Seq
from service.tasks.base import (
    WARM_UP_TEXT, Body, Operation, ScoreSpec, Task, constrained, items_type, register, text_type,
)  # fmt: skip
from service.validate import check_number, check_texts

# --------------------------------------------------------------------------------------------
# Query, result, response
# --------------------------------------------------------------------------------------------


MAX_REQUEST_LEXICON = 1000  # entries in one request's lexicon


class LexiconEntryIn(Body):
    term: str = Field(description="the text to match (matched after the bundle's normalisation)")
    label: str = Field(
        "*", description="add: the entity's label (any, also outside the model's labels); block: the label "
        "whose model entities are removed, or * for any"
    )
    action: Literal["add", "block"] = Field(
        "add", description=f"add: every occurrence becomes an entity (score {lex.LEXICON_SCORE}, source "
        '"lexicon"); block: the model\'s entities equal to the term are removed'
    )

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        """As ``service.lexicon.check_entry`` takes it: a term with a non-blank character; an "add" entry
        names a label (not blank, not "*"), a "block" entry may leave it "*" (any)."""
        term = Annotated[str, Field(max_length=lex.MAX_TERM_CHARS, pattern=r"\S")]
        label = Annotated[str, Field(max_length=lex.MAX_LABEL_CHARS)]
        named = Annotated[str, Field(max_length=lex.MAX_LABEL_CHARS, pattern=r"\S")]
        block = constrained(cls, {"term": term, "label": label, "action": Literal["block"]}, required=["term", "action"],
                            title="block")  # fmt: skip
        add = constrained(cls, {"term": term, "label": named, "action": Literal["add"]}, required=["term", "label"],
                          title="add")  # fmt: skip
        add["properties"]["label"]["not"] = {"pattern": r"^\s*\*\s*$"}
        return {"title": cls.__name__, "type": "object", "oneOf": [add, block]}


class NerQuery(Body):
    texts: list[str] = Field(description="texts to tag (long ones are windowed, never truncated)")
    threshold: float | None = Field(None, description="span score threshold; default: the bundle's")
    decode: Decode | None = Field(
        None,
        description="nested: every span above the threshold; flat: greedy non-overlapping spans "
        "(best score first, the rest dropped). Default: the bundle's (see /info)",
    )
    lexicon: list[LexiconEntryIn] | None = Field(
        None,
        description=f"this request's lexicon entries (at most {MAX_REQUEST_LEXICON}), applied after the "
        "bundle's and the server's (an entry for the same term and label replaces theirs)",
    )

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        threshold = Annotated[float, Field(ge=limits.threshold_min, le=limits.threshold_max)]
        lexicon = Annotated[list[dict[str, Any]], Field(max_length=MAX_REQUEST_LEXICON)]
        schema = constrained(cls, {"texts": items_type(text_type(limits), limits), "threshold": threshold | None,
                                   "lexicon": lexicon | None})  # fmt: skip
        schema["properties"]["lexicon"]["anyOf"][0]["items"] = LexiconEntryIn.contract(limits)
        return schema


@dataclass(frozen=True)
class NerResult:
    entities: list[list[Entity]]  # per input text, sorted by (start, end, label)


class EntityOut(BaseModel):
    start: int = Field(description="character offset into the original text")
    end: int = Field(description="exclusive")
    label: str
    text: str
    score: float
    source: Literal["model", "lexicon"] = Field(
        "model", description=f"model: decoded from span scores; lexicon: a user's term (score {lex.LEXICON_SCORE})"
    )


class NerItem(BaseModel):
    entities: list[EntityOut] = Field(
        description="sorted by start then end; nested spans all listed unless decode is flat"
    )


class NerResponse(BaseModel):
    results: list[NerItem] = Field(description="one per input text, in input order")


def _item(entities: list[Entity]) -> NerItem:
    return NerItem.model_construct(entities=[EntityOut.model_construct(**e.to_dict()) for e in entities])


# --------------------------------------------------------------------------------------------
# Rows and their budget
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class EntityBudget:
    """How many entities one NER request may still produce; shared by the rows (windows) of the request."""

    limit: int
    used: int = 0
    exceeded: bool = False


@dataclass(frozen=True, eq=False)
class Row:
    """What decoding needs of one row: offsets into ``text``, the threshold, the request's budget."""

    offsets: np.ndarray  # (n, 2) char offsets into text, specials (-1, -1)
    text: str
    threshold: float
    budget: EntityBudget


@dataclass(frozen=True)
class _State:
    texts: list[str]
    unique: list[str]
    owner: list[int]  # per row: index into unique
    threshold: float
    decode: Decode
    budget: EntityBudget
    lexicon: lex.Lexicon


def check_lexicon(value: object, field: str = "lexicon") -> list[lex.Entry]:
    """A request's lexicon (entries as models or plain dicts), checked; errors name ``lexicon[k].field``."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, (list, tuple)):
        raise InvalidRequest(f"{field} must be a list of {{term, label, action}} objects", field=field)
    if len(value) > MAX_REQUEST_LEXICON:
        raise TooManyItems(f"{field} has {len(value)} entries; at most {MAX_REQUEST_LEXICON} per request",
                           field=field, limit=MAX_REQUEST_LEXICON)  # fmt: skip
    entries = []
    for k, item in enumerate(value):
        raw = item.model_dump() if isinstance(item, BaseModel) else item
        if not isinstance(raw, dict) or set(raw) - {"term", "label", "action"}:
            raise InvalidRequest(f"{field}[{k}] must be an object with term, label, action", field=f"{field}[{k}]")
        try:
            entries.append(lex.check_entry(raw.get("term"), raw.get("label"), raw.get("action", "add")))
        except lex.LexiconError as e:
            where = f"{field}[{k}].{e.field}"
            raise InvalidRequest(f"{where}: {e}", field=where) from None
    return entries


def check_decode(value: object, field: str = "decode") -> Decode:
    """One of :data:`models.spans.DECODES`, else :class:`InvalidRequest` naming the field and the choices."""
    try:
        return spans.check_decode(value)
    except ValueError:
        raise InvalidRequest(
            f"{field} must be one of {', '.join(map(repr, spans.DECODES))}, got {value!r}", field=field
        ) from None


# --------------------------------------------------------------------------------------------
# The operation and the task
# --------------------------------------------------------------------------------------------


class Ner(Operation):
    """Entities of every text: character offsets into the original text (end exclusive); nested spans
    all listed, or only non-overlapping ones with ``decode: "flat"``."""

    name = task = "ner"
    query = NerQuery
    response = NerResponse
    summary = "Nested named entities"
    errors = (OutOfRange, TooManyEntities)
    score = ScoreSpec(items="texts", flags=("threshold", "decode"), help="entities")

    def prepare(self, task: NerServing, query: NerQuery) -> Job:
        """``threshold`` and ``decode`` ("nested" | "flat") default to the bundle's."""
        spec, limits = task.spec, task.limits
        texts = check_texts(query.texts, "texts", limits)
        decode = spec.decode if query.decode is None else check_decode(query.decode)
        threshold = spec.threshold if query.threshold is None else task.check_threshold(query.threshold)
        lexicon = task.lexicon.extended(check_lexicon(getattr(query, "lexicon", None)))
        t0 = time.perf_counter()
        unique = list(dict.fromkeys(texts))
        budget = EntityBudget(limits.max_entities)
        seqs, owner = [], []
        for u, (text, enc) in enumerate(zip(unique, task.tokenizer.encode_batch(unique))):
            if len(enc) <= task.max_length:
                rows = [Seq(enc.ids, Row(enc.offsets, text, threshold, budget))]
            else:  # cut from this encoding: the text is tokenized once
                windows = task.tokenizer.windows(enc, max_length=task.max_length, stride=task.stride)
                rows = [Seq(w.ids, Row(w.offsets, text, threshold, budget)) for w in windows]
            seqs += rows
            owner += [u] * len(rows)
        state = _State(texts, unique, owner, threshold, decode, budget, lexicon)
        return Job(self.name, self.task, seqs, state, tokenize_s=time.perf_counter() - t0)

    def finish(self, task: NerServing, job: Job, outputs: list[list[Entity]]) -> NerResult:
        s: _State = job.state
        if s.budget.exceeded:
            raise TooManyEntities(
                f"threshold {s.threshold} yields more than {s.budget.limit} entities for this request; "
                "raise the threshold or send fewer / shorter texts",
                field="threshold",
                limit=s.budget.limit,
            )
        groups: list[list[list[Entity]]] = [[] for _ in s.unique]
        for u, ents in zip(s.owner, outputs):
            groups[u].append(ents)
        flat = s.decode == "flat"
        merged = {
            t: apply_decode(s.lexicon.apply(t, g[0] if len(g) == 1 else merge_entities(g), flat=flat), s.decode)
            for t, g in zip(s.unique, groups)
        }
        return NerResult([list(merged[t]) for t in s.texts])

    def render(self, result: NerResult) -> NerResponse:
        return NerResponse.model_construct(results=[_item(ents) for ents in result.entities])

    def records(self, result: NerResult, limits: Limits) -> list[dict[str, Any] | ServiceError]:
        """Each text is held to ``max_entities`` on its own (a scoring window shares a larger budget)."""
        out: list[dict[str, Any] | ServiceError] = []
        for ents in result.entities:
            if len(ents) > limits.max_entities:
                out.append(TooManyEntities(
                    f"{len(ents)} entities for this text, more than max_entities {limits.max_entities}; "
                    "raise the threshold", field="threshold", limit=limits.max_entities,
                ))  # fmt: skip
            else:
                out.append(_item(ents).model_dump())
        return out

    def check_flags(self, flags: Mapping[str, Any], limits: Limits) -> None:
        threshold, decode = flags.get("threshold"), flags.get("decode")
        if threshold is not None:
            lo, hi = limits.threshold_min, limits.threshold_max
            if not (np.isfinite(threshold) and lo <= threshold <= hi):
                raise ValueError(f"--threshold {threshold} is outside [{lo}, {hi}] (the threshold_min/max settings)")
        if decode is not None and decode not in spans.DECODES:
            raise ValueError(f"--decode must be one of {', '.join(spans.DECODES)}, got {decode!r}")


@register
class NerServing(Task):
    kind = "ner"
    operations = (Ner(),)
    option_keys = ("ner_max_length", "ner_stride", "lexicon")
    warm_up = (("ner", {"texts": [WARM_UP_TEXT, WARM_UP_TEXT[:2]]}),)

    def __init__(self, spec: NerTask, tokenizer, limits: Limits, options: Mapping[str, Any]):
        super().__init__(spec, tokenizer, limits, options)
        self.max_length, self.stride = windows(spec, options.get("ner_max_length"), options.get("ner_stride"))
        self.lexicon = load_lexicon(options.get("bundle_dir"), options.get("lexicon"), tokenizer.normalizer)

    def check_threshold(self, value: object) -> float:
        threshold = float(check_number(value, "threshold", integer=False))
        lo, hi = self.limits.threshold_min, self.limits.threshold_max
        if not lo <= threshold <= hi:
            raise OutOfRange(
                f"threshold {threshold} is outside [{lo}, {hi}]", field="threshold", limit=hi if threshold > hi else lo
            )
        return threshold

    def postprocess(self, scores: np.ndarray, seqs: Sequence[Seq]) -> list[list[Entity]]:
        """Every span above its row's threshold, on real token boundaries (``models.spans.decode_batch``);
        rows are counted first and charged to their request's entity budget."""
        labels = self.spec.labels
        B, T = len(seqs), max(len(s) for s in seqs)
        if scores.shape != (B, len(labels), T, T):
            raise InferenceError(f"NER graph returned shape {scores.shape}, expected {(B, len(labels), T, T)}")
        rows: list[Row] = [s.meta for s in seqs]
        return decode_batch(
            scores,
            offsets_list=[r.offsets for r in rows],
            labels=labels,
            texts=[r.text for r in rows],
            threshold=[r.threshold for r in rows],  # requests sharing a batch may ask for different ones
            admit=lambda counts: _charge(rows, counts.tolist()),
        )

    def info(self) -> dict[str, Any]:
        s = self.spec
        return {
            "labels": list(s.labels), "head": s.head, "threshold": s.threshold, "decode": s.decode,
            "max_length": self.max_length, "stride": self.stride,
            "long_texts": "sliding windows, entities merged", "lexicon": self.lexicon.info(), "metrics": s.metrics,
        }  # fmt: skip

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ner_max_length": self.max_length, "ner_stride": self.stride}
        if len(self.lexicon):  # a resumed `score` run must use the same lexicon
            out["lexicon_sha256"] = self.lexicon.fingerprint()
        return out


def load_lexicon(bundle_dir: str | Path | None, path: str | Path | None, normalize) -> lex.Lexicon:
    """The bundle's ``lexicon.tsv`` (when it has one), then the server's file (the ``lexicon`` setting)."""
    bundled = Path(bundle_dir) / lex.LEXICON_FILE if bundle_dir is not None else None
    paths = [p for p in (bundled if bundled is not None and bundled.is_file() else None, path) if p is not None]
    try:
        return lex.load(paths, normalize)
    except lex.LexiconError as e:
        raise ValueError(str(e)) from None


def _charge(rows: Sequence[Row], counts: list[int]) -> np.ndarray:
    """Charge each row's entity count to its request's budget; False for rows of requests over it."""
    keep = np.ones(len(rows), dtype=bool)
    for k, (r, n) in enumerate(zip(rows, counts)):
        r.budget.used += n
        r.budget.exceeded |= r.budget.used > r.budget.limit
        keep[k] = not r.budget.exceeded
    return keep


def windows(spec: NerTask, max_length: int | None, stride: int | None) -> tuple[int, int]:
    """NER window length and stride: the bundle's, or smaller ones from the settings."""
    L = spec.max_length if max_length is None else max_length
    if not 3 <= L <= spec.max_length:
        raise ValueError(f"ner_max_length {L} must be in [3, the bundle's {spec.max_length}]")
    width = L - 2
    if stride is None:
        stride = spec.stride if spec.stride <= width else max(1, width // 2)
    if not 1 <= stride <= width:
        raise ValueError(f"ner_stride {stride} must be in [1, ner_max_length - 2 = {width}]")
    return L, stride
