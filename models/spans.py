"""Decode GlobalPointer span scores into entities (torch-free: numpy only, vectorised).

``scores[b, c, i, j]`` scores token span ``i..j`` (inclusive) as entity type ``c``. Every span with
``i <= j`` on real tokens and a score above the threshold is an entity — nested and overlapping ones
included; no Python loop over L x L, and no (B, C, L, L) mask either when few scores pass: the
candidates above the threshold are found first and only they are checked (:func:`span_indices`;
the span rule itself is one function, :func:`_on_boundaries`). Entities carry character offsets
into the original text (end exclusive), taken from the :class:`models.text.Encoding` /
:class:`models.text.Window` offsets, so spans from different windows of one text are directly
comparable (:func:`merge_entities`).

Decoding mode (:data:`DECODES`, applied per text *after* windows are merged, by :func:`apply_decode`):
``"nested"`` keeps every entity; ``"flat"`` keeps a greedy set of non-overlapping ones
(:func:`non_overlapping`), for models trained on flat data (CLUENER), where an overlap is an error by
construction.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from models.text import token_boundaries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entity:
    """One entity: characters ``text[start:end]`` of the original text, typed ``label``; ``source``:
    "model" (decoded from span scores) or "lexicon" (a user's term, ``service.lexicon``)."""

    start: int
    end: int
    label: str
    text: str
    score: float
    source: str = "model"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _sort_key(e: Entity) -> tuple[int, int, str]:
    return (e.start, e.end, e.label)


def _offsets_table(offsets_list: Sequence[np.ndarray], L: int) -> np.ndarray:
    """Stack per-item offsets into (B, L, 2), padding with (-1, -1) (= not a real token)."""
    offs = [np.asarray(off, dtype=np.int64).reshape(-1, 2) for off in offsets_list]
    lengths = np.array([len(off) for off in offs], dtype=np.int64)  # (B,)
    if len(offs) and lengths.max() > L:
        b = int(np.argmax(lengths))
        raise ValueError(f"offsets_list[{b}] has {lengths[b]} tokens but scores only {L} positions")
    table = np.full((len(offs), L, 2), -1, dtype=np.int64)
    if len(offs):
        table[np.arange(L)[None, :] < lengths[:, None]] = np.concatenate(offs)  # rows in order
    return table


def _on_boundaries(can_start: np.ndarray, can_end: np.ndarray, b, i, j) -> np.ndarray:
    """THE span rule: token span ``i..j`` of item ``b`` can be an entity (``i <= j``, starting on a
    token a span may start on, ending on one it may end on; see :func:`models.text.token_boundaries`).

    ``b, i, j`` are index arrays that broadcast: candidate lists (N,) or an open grid over (B, L, L).
    """
    return (i <= j) & can_start[b, i] & can_end[b, j]


SPARSE_SHARE = 8  # more than 1/8 of all scores above the threshold: mask densely (bounded memory)

Admit = Callable[[np.ndarray], np.ndarray]


def span_indices(
    scores: np.ndarray,
    table: np.ndarray,
    threshold: float | Sequence[float] | np.ndarray = 0.0,
    *,
    admit: Admit | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(b, c, i, j)`` of every span above its item's threshold that can be an entity.

    ``scores`` (B, C, L, L); ``table`` (B, L, 2) offsets (:func:`_offsets_table`); ``threshold`` one
    number or one per item, compared in the scores' dtype. ``admit(counts)`` (optional) sees the
    number of spans of each item, (B,) int64, *before* any index list of the survivors is built and
    returns a (B,) bool mask of the items to keep (an entity budget); the others yield nothing.

    Usually few scores pass, so the candidates are found first (``flatnonzero`` over the scores, no
    (B, C, L, L) mask) and only they are checked against the span rule. When a large share passes
    (a very low threshold, a graph without masks), the rule is applied as a dense mask instead, so
    no index list larger than the answer is built.
    """
    B = len(scores)
    thr = np.asarray(threshold, dtype=scores.dtype)
    if thr.ndim:
        if thr.shape != (B,):
            raise ValueError(f"{thr.size} thresholds for a batch of {B}")
        thr = thr[:, None, None, None]  # (B, 1, 1, 1)
    above = scores > thr  # (B, C, L, L)
    can_start, can_end = token_boundaries(table)  # (B, L) each
    if np.count_nonzero(above) * SPARSE_SHARE <= above.size:
        b, c, i, j = np.unravel_index(np.flatnonzero(above), above.shape)  # (N,) each
        valid = _on_boundaries(can_start, can_end, b, i, j)
        b, c, i, j = b[valid], c[valid], i[valid], j[valid]
        if admit is not None:
            keep = np.asarray(admit(np.bincount(b, minlength=B)), dtype=bool)[b]
            b, c, i, j = b[keep], c[keep], i[keep], j[keep]
        return b, c, i, j
    rows, i, j = np.ogrid[:B, : scores.shape[2], : scores.shape[3]]  # (B, 1, 1), (1, L, 1), (1, 1, L)
    above &= _on_boundaries(can_start, can_end, rows, i, j)[:, None]  # (B, C, L, L)
    if admit is not None:
        above &= np.asarray(admit(above.sum(axis=(1, 2, 3))), dtype=bool)[:, None, None, None]
    return np.nonzero(above)


def _build(
    b: np.ndarray,
    c: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    score: np.ndarray,
    *,
    table: np.ndarray,
    labels: Sequence[str],
    texts: Sequence[str],
) -> list[list[Entity]]:
    """Turn hit rows (already filtered to valid spans) into sorted entity lists, one per item."""
    starts = table[b, i, 0]  # (N,)
    ends = table[b, j, 1]  # (N,)
    rank = {label: r for r, label in enumerate(sorted(set(labels)))}
    label_rank = np.array([rank[label] for label in labels], dtype=np.int64)  # (C,)
    order = np.lexsort((label_rank[c], ends, starts, b))  # by item, then (start, end, label)
    b, c, starts, ends, score = b[order], c[order], starts[order], ends[order], score[order]
    bounds = np.searchsorted(b, np.arange(len(texts) + 1))  # item k owns rows bounds[k]:bounds[k+1]
    rows = list(zip(starts.tolist(), ends.tolist(), c.tolist(), score.astype(np.float64).tolist()))
    return [
        [
            Entity(start=s, end=e, label=labels[k], text=texts[item][s:e], score=v)
            for s, e, k, v in rows[bounds[item] : bounds[item + 1]]
        ]
        for item in range(len(texts))
    ]


def _check_labels(labels: Sequence[str], C: int) -> None:
    if len(labels) != C:
        raise ValueError(f"scores have {C} entity types but {len(labels)} labels were given")


def decode_batch(
    scores: np.ndarray,
    *,
    offsets_list: Sequence[np.ndarray],
    labels: Sequence[str],
    texts: Sequence[str],
    threshold: float | Sequence[float] | np.ndarray = 0.0,
    admit: Admit | None = None,
) -> list[list[Entity]]:
    """Decode (B, C, L, L) scores: one entity list per item, each sorted by (start, end, label).

    ``offsets_list[b]`` may be shorter than L (positions past it are padding). Masked positions may
    hold any value (``finfo.min``, ``-1e4``, ``-inf``, garbage): they are excluded structurally.
    ``threshold`` is one number or one per item (rows of a server batch come from different
    requests); ``admit`` is an optional entity budget (see :func:`span_indices`).
    """
    scores = np.asarray(scores)
    if scores.ndim != 4 or scores.shape[2] != scores.shape[3]:
        raise ValueError(f"scores must be (B, C, L, L), got shape {scores.shape}")
    B, C, L, _ = scores.shape
    if not len(offsets_list) == len(texts) == B:
        raise ValueError(f"batch of {B} scores but {len(offsets_list)} offsets and {len(texts)} texts")
    _check_labels(labels, C)
    table = _offsets_table(offsets_list, L)  # (B, L, 2)
    b, c, i, j = span_indices(scores, table, threshold, admit=admit)  # (N,) each
    return _build(b, c, i, j, scores[b, c, i, j], table=table, labels=labels, texts=texts)


def decode_spans(
    scores: np.ndarray,
    *,
    offsets: np.ndarray,
    labels: Sequence[str],
    text: str,
    threshold: float = 0.0,
) -> list[Entity]:
    """Decode (C, L, L) scores of one text into entities sorted by (start, end, label)."""
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise ValueError(f"scores must be (C, L, L), got shape {scores.shape}")
    return decode_batch(scores[None], offsets_list=[offsets], labels=labels, texts=[text], threshold=threshold)[0]


def spans_from_indices(
    indices: np.ndarray,
    scores: np.ndarray,
    *,
    offsets_list: Sequence[np.ndarray],
    labels: Sequence[str],
    texts: Sequence[str],
) -> list[list[Entity]]:
    """Entities from rows a graph already thresholded: ``indices`` (N, 4) = (batch, type, i, j), ``scores`` (N,).

    Rows on spans that are not entities (j < i, padding, special tokens) are dropped, as in
    :func:`decode_batch`; a batch or type index out of range is an error.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1, 4)
    scores = np.asarray(scores).reshape(-1)
    if len(scores) != len(indices):
        raise ValueError(f"{len(indices)} index rows but {len(scores)} scores")
    if len(offsets_list) != len(texts):
        raise ValueError(f"{len(offsets_list)} offsets but {len(texts)} texts")
    b, c, i, j = indices.T  # (N,) each
    if np.any((b < 0) | (b >= len(texts)) | (c < 0) | (c >= len(labels))):
        raise ValueError(f"index rows name a batch item or type outside ({len(texts)} texts, {len(labels)} labels)")
    L = max((len(o) for o in offsets_list), default=0)
    table = _offsets_table(offsets_list, L)  # (B, L, 2)
    can_start, can_end = token_boundaries(table)  # (B, L) each
    keep = (i >= 0) & (j < L)
    keep[keep] = _on_boundaries(can_start, can_end, b[keep], i[keep], j[keep])
    return _build(b[keep], c[keep], i[keep], j[keep], scores[keep], table=table, labels=labels, texts=texts)


def merge_entities(groups: Iterable[Iterable[Entity]]) -> list[Entity]:
    """Union of entities from several windows of one text; a repeated (start, end, label) keeps its best score."""
    best: dict[tuple[int, int, str], Entity] = {}
    for group in groups:
        for e in group:
            key = _sort_key(e)
            if key not in best or e.score > best[key].score:
                best[key] = e
    return sorted(best.values(), key=_sort_key)


Decode = Literal["nested", "flat"]
DECODES: tuple[Decode, ...] = ("nested", "flat")


def non_overlapping(entities: Iterable[Entity]) -> list[Entity]:
    """Greedy flat decoding of one text: keep the best-scoring entity, drop every entity sharing a
    character with it (nested or partially overlapping, any label), repeat. Ties go by (start, end,
    label); offsets are end-exclusive, so ``[0, 2)`` and ``[2, 4)`` do not overlap. Sorted by
    (start, end, label).

    Each entity is decided by the better-ranked ones only, so keeping only the entities above a
    threshold before or after this gives the same result.
    """
    starts: list[int] = []  # the kept spans, disjoint and sorted by start (so by end too)
    ends: list[int] = []
    kept = []
    for e in sorted(entities, key=lambda e: (-e.score, e.start, e.end, e.label)):
        k = bisect.bisect_left(starts, e.end)  # kept spans starting before e ends: starts[:k]
        if k and ends[k - 1] > e.start:  # the last of them ends furthest right
            continue
        starts.insert(k, e.start)
        ends.insert(k, e.end)
        kept.append(e)
    return sorted(kept, key=_sort_key)


def check_decode(decode: object) -> Decode:
    """``decode`` itself when it is one of :data:`DECODES`, else ValueError naming them."""
    if decode not in DECODES:
        raise ValueError(f"unknown decode {decode!r}; choose from {', '.join(DECODES)}")
    return decode  # type: ignore[return-value]


def apply_decode(entities: Sequence[Entity], decode: Decode) -> list[Entity]:
    """The entities of one text (windows already merged) as ``decode`` reports them: ``"nested"``
    all of them, ``"flat"`` :func:`non_overlapping`."""
    return non_overlapping(entities) if check_decode(decode) == "flat" else list(entities)
