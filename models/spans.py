"""Decode GlobalPointer span scores into entities (torch-free: numpy only, vectorised).

``scores[b, c, i, j]`` scores token span ``i..j`` (inclusive) as entity type ``c``. Every span with
``i <= j`` on real tokens and a score above the threshold is an entity — nested and overlapping ones
included; no Python loop over L x L. Entities carry character offsets into the original text (end
exclusive), taken from the :class:`models.text.Encoding` / :class:`models.text.Window` offsets, so
spans from different windows of one text are directly comparable (:func:`merge_entities`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from models.text import token_boundaries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entity:
    """One entity: characters ``text[start:end]`` of the original text, typed ``label``."""

    start: int
    end: int
    label: str
    text: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _sort_key(e: Entity) -> tuple[int, int, str]:
    return (e.start, e.end, e.label)


def _offsets_table(offsets_list: Sequence[np.ndarray], L: int) -> np.ndarray:
    """Stack per-item offsets into (B, L, 2), padding with (-1, -1) (= not a real token)."""
    table = np.full((len(offsets_list), L, 2), -1, dtype=np.int64)
    for b, off in enumerate(offsets_list):
        off = np.asarray(off, dtype=np.int64).reshape(-1, 2)
        if len(off) > L:
            raise ValueError(f"offsets_list[{b}] has {len(off)} tokens but scores only {L} positions")
        table[b, : len(off)] = off
    return table


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
    threshold: float = 0.0,
) -> list[list[Entity]]:
    """Decode (B, C, L, L) scores: one entity list per item, each sorted by (start, end, label).

    ``offsets_list[b]`` may be shorter than L (positions past it are padding). Masked positions may
    hold any value (``finfo.min``, ``-1e4``, ``-inf``, garbage): they are excluded structurally.
    """
    scores = np.asarray(scores)
    if scores.ndim != 4 or scores.shape[2] != scores.shape[3]:
        raise ValueError(f"scores must be (B, C, L, L), got shape {scores.shape}")
    B, C, L, _ = scores.shape
    if not len(offsets_list) == len(texts) == B:
        raise ValueError(f"batch of {B} scores but {len(offsets_list)} offsets and {len(texts)} texts")
    _check_labels(labels, C)
    table = _offsets_table(offsets_list, L)  # (B, L, 2)
    can_start, can_end = token_boundaries(table)  # (B, L) each
    allowed = np.triu(np.ones((L, L), dtype=bool)) & can_start[:, :, None] & can_end[:, None, :]  # (B, L, L)
    b, c, i, j = np.nonzero((scores > threshold) & allowed[:, None])  # (N,) each
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
    keep = (i >= 0) & (i <= j) & (j < L)
    keep[keep] = can_start[b[keep], i[keep]] & can_end[b[keep], j[keep]]
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
