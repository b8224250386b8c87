"""Evaluation metrics (torch-free): exact-span NER scores and correlation for similarity.

NER. An entity is the tuple ``(text id, start, end, label)``; a prediction is right only when all
four match a gold entity (exact span, exact type). Counting is over *sets* (a duplicate counts once).

* micro P/R/F1: over all entities of all texts.
* per type: the same restricted to one label, plus ``support`` (gold count) and ``predicted``.
* nested-only: the scores restricted to entities that take part in nesting, defined on each side
  separately. A gold entity is *nested* when, in the same text, another **gold** entity with a
  different span contains it or is contained in it (``s <= s'`` and ``e' <= e``, spans
  ``[s, e)`` differ); likewise a predicted entity is nested when another **predicted** entity does.
  Then nested precision = nested predictions that are gold / nested predictions, and nested recall =
  nested gold entities that are predicted / nested gold entities. Same-span entities of different
  types (multi-label) and partially overlapping ("crossing") spans are not nesting.

Every ratio with a zero denominator is 0 (nothing predicted -> precision 0, nothing gold -> recall 0,
P + R = 0 -> F1 0): never a ZeroDivisionError, never NaN.

Similarity. Spearman and Pearson correlation between predicted cosines and gold labels, x 100
(``scipy.stats``). When either side is constant the correlation is undefined: reported as 0.0.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

log = logging.getLogger(__name__)

Span = tuple[int, int, str]  # (start, end exclusive, label) within one text
Key = tuple[Hashable, int, int, str]  # (text id, start, end, label)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


@dataclass(frozen=True)
class PRF:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return _ratio(2 * p * r, p + r)

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def predicted(self) -> int:
        return self.tp + self.fp

    def to_dict(self) -> dict:
        return asdict(self) | {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                               "support": self.support, "predicted": self.predicted}


def prf(gold: Iterable[Key], pred: Iterable[Key]) -> PRF:
    """Exact-match counts between two sets of entity keys."""
    g, p = set(gold), set(pred)
    tp = len(g & p)
    return PRF(tp=tp, fp=len(p) - tp, fn=len(g) - tp)


def _keys(per_text: Sequence[Iterable[Span]]) -> set[Key]:
    return {(t, int(s), int(e), str(label)) for t, spans in enumerate(per_text) for s, e, label in spans}


def nested_keys(keys: Iterable[Key]) -> set[Key]:
    """The keys whose span contains, or lies inside, the different span of another key of the same text."""
    by_text: dict[Hashable, set[tuple[int, int]]] = {}
    keys = set(keys)
    for t, s, e, _ in keys:
        by_text.setdefault(t, set()).add((s, e))
    nested_spans: dict[Hashable, set[tuple[int, int]]] = {}
    for t, spans in by_text.items():
        arr = np.array(sorted(spans), dtype=np.int64).reshape(-1, 2)  # (n, 2) distinct spans
        s, e = arr[:, 0], arr[:, 1]
        contains = (s[:, None] <= s[None, :]) & (e[None, :] <= e[:, None])  # (n, n): span a contains b
        np.fill_diagonal(contains, False)
        involved = contains.any(axis=1) | contains.any(axis=0)  # (n,)
        nested_spans[t] = {tuple(x) for x in arr[involved].tolist()}
    return {k for k in keys if (k[1], k[2]) in nested_spans[k[0]]}


def ner_scores(gold: Sequence[Iterable[Span]], pred: Sequence[Iterable[Span]],
               labels: Sequence[str] | None = None) -> dict:
    """Micro, per-type and nested-only scores; ``gold[t]`` / ``pred[t]`` are the spans of text t.

    ``labels`` fixes the rows of the per-type table (types seen in gold or predictions are added).
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold texts but {len(pred)} predicted")
    g, p = _keys(gold), _keys(pred)
    micro = prf(g, p)
    types = list(dict.fromkeys([*(labels or ()), *sorted({k[3] for k in g | p})]))
    per_type = {c: prf({k for k in g if k[3] == c}, {k for k in p if k[3] == c}).to_dict() for c in types}
    ng, np_ = nested_keys(g), nested_keys(p)
    n_prec, n_rec = _ratio(len(np_ & g), len(np_)), _ratio(len(ng & p), len(ng))
    nested = {"precision": n_prec, "recall": n_rec, "f1": _ratio(2 * n_prec * n_rec, n_prec + n_rec),
              "gold": len(ng), "predicted": len(np_), "gold_found": len(ng & p), "predicted_right": len(np_ & g)}
    return {"precision": micro.precision, "recall": micro.recall, "f1": micro.f1, "tp": micro.tp,
            "fp": micro.fp, "fn": micro.fn, "gold": micro.support, "predicted": micro.predicted,
            "texts": len(gold), "per_type": per_type, "nested": nested}


def macro_f1(per_type: dict) -> float:
    """Mean F1 over the types with gold entities (0 when there are none)."""
    f = [v["f1"] for v in per_type.values() if v["support"]]
    return sum(f) / len(f) if f else 0.0


# --------------------------------------------------------------------------------------------
# Similarity
# --------------------------------------------------------------------------------------------


def _correlation(kind: str, scores: Sequence[float], labels: Sequence[float]) -> float:
    from scipy import stats

    x, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"scores and labels must be two equal-length lists, got {x.shape} and {y.shape}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        log.warning("%s correlation undefined (fewer than 2 pairs or a constant side): reported as 0", kind)
        return 0.0
    r = (stats.spearmanr if kind == "spearman" else stats.pearsonr)(x, y)[0]
    return float(r) * 100 if math.isfinite(r) else 0.0


def spearman(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation x 100."""
    return _correlation("spearman", scores, labels)


def pearson(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation x 100."""
    return _correlation("pearson", scores, labels)


def similarity_scores(scores: Sequence[float], labels: Sequence[float]) -> dict:
    labels_count = Counter(float(v) for v in labels)
    return {"spearman": spearman(scores, labels), "pearson": pearson(scores, labels), "pairs": len(labels),
            "labels": {f"{k:g}": v for k, v in sorted(labels_count.items())}}
