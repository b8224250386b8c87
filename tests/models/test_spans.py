"""Span decoding (models/spans.py): nested spans, masking, thresholds, batching, window merging,
flat (non-overlapping) decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import spans
from models.spans import (
    Entity,
    apply_decode,
    decode_batch,
    decode_spans,
    merge_entities,
    non_overlapping,
    spans_from_indices,
)
from models.text import Tokenizer, char_span_to_token_span

LABELS = ["LOC", "ORG"]
LOC, ORG = 0, 1
NEG = float(np.finfo(np.float32).min)


def char_offsets(n: int, pad: int = 0) -> np.ndarray:
    """[CLS] + one token per character + [SEP], plus `pad` padding positions (not in offsets)."""
    return np.array([[-1, -1]] + [[k, k + 1] for k in range(n)] + [[-1, -1]], dtype=np.int64)


def masked_scores(
    offsets: np.ndarray, C: int, L: int, *, fill: float, masked: float = NEG, dtype: type = np.float32
) -> np.ndarray:
    """(C, L, L): `fill` on valid spans (i <= j, real tokens), `masked` elsewhere, as a graph would give."""
    real = np.zeros(L, dtype=bool)
    real[: len(offsets)] = offsets[:, 0] >= 0
    valid = np.triu(np.ones((L, L), dtype=bool)) & real[:, None] & real[None, :]
    return np.where(valid[None], fill, masked).astype(dtype) * np.ones((C, 1, 1), dtype=dtype)


def brute_force(
    scores: np.ndarray, offsets: np.ndarray, labels: list[str], text: str, threshold: float
) -> list[Entity]:
    """The definition, as plain loops over every (type, i, j)."""
    out = []
    C, L, _ = scores.shape
    for c in range(C):
        for i in range(min(L, len(offsets))):
            for j in range(i, min(L, len(offsets))):
                if offsets[i, 0] >= 0 and offsets[j, 0] >= 0 and scores[c, i, j] > threshold:
                    s, e = int(offsets[i, 0]), int(offsets[j, 1])
                    out.append(Entity(s, e, labels[c], text[s:e], float(scores[c, i, j])))
    return sorted(out, key=lambda e: (e.start, e.end, e.label))


TEXT = "我在北京大学读书"  # tokens 1..8 are the characters, 北京 = tokens 3..4, 北京大学 = tokens 3..6


def test_nested_entities() -> None:
    off = char_offsets(len(TEXT))
    scores = masked_scores(off, 2, len(off), fill=-5.0)
    scores[ORG, 3, 6] = 5.0
    scores[LOC, 3, 4] = 3.0
    assert decode_spans(scores, offsets=off, labels=LABELS, text=TEXT) == [
        Entity(start=2, end=4, label="LOC", text="北京", score=3.0),
        Entity(start=2, end=6, label="ORG", text="北京大学", score=5.0),
    ]


def test_same_span_two_types_sorted_by_label() -> None:
    off = char_offsets(len(TEXT))
    scores = masked_scores(off, 2, len(off), fill=-5.0)
    scores[ORG, 3, 4] = 1.0
    scores[LOC, 3, 4] = 2.0
    got = decode_spans(scores, offsets=off, labels=["ZZZ", "AAA"], text=TEXT)
    assert [(e.label, e.score) for e in got] == [("AAA", 1.0), ("ZZZ", 2.0)]


@pytest.mark.parametrize(("dtype", "masked"), [(np.float32, NEG), (np.float16, -1e4), (np.float32, -np.inf)])
def test_masked_positions_never_decode(dtype, masked: float) -> None:
    off = char_offsets(len(TEXT))
    L = len(off) + 3  # three padding positions
    scores = masked_scores(off, 2, L, fill=-5.0, masked=masked, dtype=dtype)
    got = decode_spans(scores, offsets=off, labels=LABELS, text=TEXT, threshold=-1e3)
    assert len(got) == 2 * (8 * 9 // 2)  # every real span i <= j of the 8 characters, both types
    assert all(e.score == -5.0 and 0 <= e.start < e.end <= len(TEXT) for e in got)


def test_unmasked_garbage_never_decodes() -> None:
    # A graph without masks: high scores on j < i, on [CLS]/[SEP] and on padding must not decode.
    off = char_offsets(len(TEXT))
    L = len(off) + 2
    scores = masked_scores(off, 2, L, fill=-5.0, masked=100.0)
    scores[LOC, 3, 4] = 1.0
    assert decode_spans(scores, offsets=off, labels=LABELS, text=TEXT) == [Entity(2, 4, "LOC", "北京", 1.0)]


def test_threshold_respected() -> None:
    off = char_offsets(len(TEXT))
    scores = masked_scores(off, 2, len(off), fill=-5.0)
    scores[LOC, 3, 4] = 0.5
    scores[ORG, 3, 6] = 1.5
    scores[ORG, 7, 8] = 1.0
    got = decode_spans(scores, offsets=off, labels=LABELS, text=TEXT)
    assert [e.text for e in got] == ["北京", "北京大学", "读书"]
    got = decode_spans(scores, offsets=off, labels=LABELS, text=TEXT, threshold=1.0)  # strictly greater
    assert got == [Entity(2, 6, "ORG", "北京大学", 1.5)]


def test_matches_brute_force_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    text = "hello world 我爱 北京！ab"
    off = np.array([[-1, -1], [0, 5], [6, 11], [12, 13], [13, 14], [15, 16], [16, 17], [17, 18], [18, 20], [-1, -1]])
    labels = ["PER", "LOC", "ORG"]
    L = len(off) + 2
    for threshold in (-1.0, 0.0, 0.7):
        scores = rng.normal(size=(3, L, L)).astype(np.float32)
        got = decode_spans(scores, offsets=off, labels=labels, text=text, threshold=threshold)
        assert got == brute_force(scores, off, labels, text, threshold)
        assert len(got) > 0


def test_decode_batch_equals_single() -> None:
    rng = np.random.default_rng(1)
    texts = ["我在北京大学读书", "上海", ""]
    offs = [char_offsets(len(t)) for t in texts]
    L = max(len(o) for o in offs) + 1
    scores = rng.normal(size=(3, 2, L, L)).astype(np.float32)
    batch = decode_batch(scores, offsets_list=offs, labels=LABELS, texts=texts, threshold=0.5)
    single = [
        decode_spans(scores[b, :, : len(o), : len(o)], offsets=o, labels=LABELS, text=t, threshold=0.5)
        for b, (o, t) in enumerate(zip(offs, texts))
    ]
    assert batch == single
    assert [len(x) for x in batch][2] == 0 and len(batch[0]) > 0 and len(batch[1]) > 0


def test_spans_from_indices_equals_decode_batch() -> None:
    rng = np.random.default_rng(2)
    texts = ["我在北京大学读书", "上海"]
    offs = [char_offsets(len(t)) for t in texts]
    L = max(len(o) for o in offs)
    scores = rng.normal(size=(2, 2, L, L)).astype(np.float32)
    rows = np.argwhere(scores > 0.3)  # what an unmasked graph would hand over: (N, 4)
    got = spans_from_indices(rows, scores[tuple(rows.T)], offsets_list=offs, labels=LABELS, texts=texts)
    assert got == decode_batch(scores, offsets_list=offs, labels=LABELS, texts=texts, threshold=0.3)
    with pytest.raises(ValueError, match="outside"):
        spans_from_indices([[5, 0, 1, 1]], [1.0], offsets_list=offs, labels=LABELS, texts=texts)


def test_shape_errors() -> None:
    off = char_offsets(3)
    with pytest.raises(ValueError, match="labels"):
        decode_spans(np.zeros((3, 5, 5)), offsets=off, labels=LABELS, text="北京人")
    with pytest.raises(ValueError, match="offsets"):
        decode_spans(np.zeros((2, 4, 4)), offsets=off, labels=LABELS, text="北京人")


def test_merge_entities() -> None:
    a = [Entity(2, 4, "LOC", "北京", 0.5), Entity(0, 1, "PER", "我", 2.0)]
    b = [Entity(2, 4, "LOC", "北京", 1.5), Entity(2, 4, "ORG", "北京", 0.1)]
    c = [Entity(2, 4, "LOC", "北京", 1.0)]
    assert merge_entities([a, b, c]) == [
        Entity(0, 1, "PER", "我", 2.0),
        Entity(2, 4, "LOC", "北京", 1.5),
        Entity(2, 4, "ORG", "北京", 0.1),
    ]
    assert merge_entities([]) == []


def test_to_dict() -> None:
    got = Entity(2, 4, "LOC", "北京", 1.5).to_dict()
    assert got == {"start": 2, "end": 4, "label": "LOC", "text": "北京", "score": 1.5, "source": "model"}


def test_windows_decode_like_whole_text(tmp_path: Path) -> None:
    """Spans decoded from overlapping windows and merged equal spans decoded from the whole text."""
    vocab = tmp_path / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"我在北京大学读书上海人", "hello", "world", "##s"]
    vocab.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    tok = Tokenizer.from_vocab(vocab)
    unit = "我在北京大学读书，hello worlds 上海人。"
    text = unit * 3
    per_unit = [(2, 4, "LOC"), (2, 6, "ORG"), (9, 21, "ORG"), (22, 24, "LOC")]  # 北京 北京大学 hello… 上海
    gold = {(k * len(unit) + s, k * len(unit) + e, label) for k in range(3) for s, e, label in per_unit}

    def fake_model(offsets: np.ndarray) -> np.ndarray:
        """(C, L, L) scores: +1 on the token spans of gold entities, -1 on other spans, masked elsewhere."""
        scores = masked_scores(offsets, 2, len(offsets), fill=-1.0)
        for s, e, label in gold:
            span = char_span_to_token_span(offsets, s, e)
            if span is not None:
                scores[LABELS.index(label), span[0], span[1]] = 1.0
        return scores

    whole = tok.encode(text)
    expected = decode_spans(fake_model(whole.offsets), offsets=whole.offsets, labels=LABELS, text=text)
    assert {(e.start, e.end, e.label) for e in expected} == gold
    windows = tok.encode_windows(text, max_length=12, stride=4)  # entities are at most 4 tokens: all fit in some window
    assert len(windows) > 3
    decoded = [decode_spans(fake_model(w.offsets), offsets=w.offsets, labels=LABELS, text=text) for w in windows]
    assert merge_entities(decoded) == expected


def reference(
    scores: np.ndarray, offsets_list: list[np.ndarray], thresholds: list[float]
) -> list[set[tuple[int, int, int, float]]]:
    """Per item, {(type, i, j, score)} by plain loops over every span, with the full token rule: start
    on a real non-empty token, end on a real token not followed by an empty one, i <= j."""
    out = []
    for b, (off, thr) in enumerate(zip(offsets_list, thresholds)):
        n = len(off)
        real = [off[k, 0] >= 0 for k in range(n)]
        empty = [real[k] and off[k, 1] <= off[k, 0] for k in range(n)]
        start = [real[k] and not empty[k] for k in range(n)]
        end = [real[k] and not (k + 1 < n and empty[k + 1]) for k in range(n)]
        out.append({
            (c, i, j, float(scores[b, c, i, j]))
            for c in range(scores.shape[1]) for i in range(n) for j in range(i, n)
            if start[i] and end[j] and scores[b, c, i, j] > scores.dtype.type(thr)
        })  # fmt: skip
    return out


def random_batch(rng: np.random.Generator, B: int, C: int, L: int):
    """Offsets of B items of random length (some with empty tokens, as from a split character),
    and (B, C, L, L) scores whose masked and padded positions hold finfo.min, -inf, NaN or high junk."""
    offsets_list, texts = [], []
    for _ in range(B):
        pos, off = 0, [(-1, -1)]
        for k in range(int(rng.integers(0, L - 1))):  # content tokens; 0: just [CLS] [SEP]
            width = int(rng.choice([0, 1, 1, 2])) if k else 1  # 0: the rest of a split character
            pos += int(width > 0 and rng.random() < 0.3)  # a space before it
            off.append((pos, pos + width))
            pos += width
        offsets_list.append(np.array([*off, (-1, -1)], dtype=np.int64))
        texts.append("字" * pos)
    scores = rng.normal(size=(B, C, L, L)).astype(np.float32)
    junk_values = np.array([np.finfo(np.float32).min, -np.inf, np.nan, 50.0], dtype=np.float32)
    junk = rng.choice(junk_values, size=scores.shape)
    invalid = ~np.triu(np.ones((L, L), dtype=bool)) & (rng.random(scores.shape) < 0.3)  # j < i
    for b, off in enumerate(offsets_list):
        invalid[b, :, len(off) :, :] = invalid[b, :, :, len(off) :] = True  # padding
    scores[invalid] = junk[invalid]
    return scores, offsets_list, texts


@pytest.fixture(params=["sparse", "dense"])
def path(request, monkeypatch) -> str:
    """Force :func:`span_indices` down one path (candidates first, or a dense mask) whatever passes."""
    monkeypatch.setattr(spans, "SPARSE_SHARE", 1 if request.param == "sparse" else 10**15)
    return request.param


@pytest.mark.parametrize("seed", range(4))
def test_decode_batch_equals_reference_with_per_item_thresholds(seed: int, path: str) -> None:
    """The same entities as checking every span by loops, on either path, with one threshold per item
    and junk (NaN, -inf, finfo.min, high scores) where spans are masked or padded."""
    rng = np.random.default_rng(seed)
    B, C, L = 5, 3, 14
    scores, offsets_list, texts = random_batch(rng, B, C, L)
    labels = ["PER", "LOC", "ORG"]
    for thresholds in ([1.5] * B, rng.uniform(0.5, 2.5, B).tolist(), rng.uniform(-3.0, 0.0, B).tolist()):
        kw = {"offsets_list": offsets_list, "labels": labels, "texts": texts}
        got = decode_batch(scores, threshold=thresholds, **kw)
        want = reference(scores, offsets_list, thresholds)
        for b, (ents, ref) in enumerate(zip(got, want, strict=True)):
            off = offsets_list[b]
            expected = sorted(
                (Entity(int(off[i, 0]), int(off[j, 1]), labels[c], texts[b][off[i, 0] : off[j, 1]], v)
                 for c, i, j, v in ref),
                key=lambda e: (e.start, e.end, e.label),
            )  # fmt: skip
            assert ents == expected
        if len(set(thresholds)) == 1:  # a scalar says the same
            assert got == decode_batch(scores, threshold=thresholds[0], **kw)


@pytest.mark.parametrize("threshold", [1.0, -5.0])
def test_admit_sees_counts_before_decoding(threshold: float, path: str) -> None:
    rng = np.random.default_rng(7)
    scores, offsets_list, texts = random_batch(rng, 4, 2, 12)
    seen = []

    def admit(counts: np.ndarray) -> np.ndarray:
        seen.append(counts.tolist())
        return np.array([True, False, True, False])

    kw = {"offsets_list": offsets_list, "labels": LABELS, "texts": texts, "threshold": threshold}
    got = decode_batch(scores, admit=admit, **kw)
    full = decode_batch(scores, **kw)
    assert seen == [[len(x) for x in full]] and sum(seen[0]) > 0
    assert got == [full[0], [], full[2], []]


def test_threshold_count_checked() -> None:
    off = char_offsets(2)
    with pytest.raises(ValueError, match="thresholds"):
        decode_batch(np.zeros((1, 2, 4, 4)), offsets_list=[off], labels=LABELS, texts=["北"], threshold=[0, 1])


# --------------------------------------------------------------------------------------------
# Flat decoding: greedy non-overlapping spans
# --------------------------------------------------------------------------------------------


def E(start: int, end: int, label: str, score: float) -> Entity:
    return Entity(start, end, label, TEXT[start:end], score)


def test_flat_keeps_the_best_of_nested_spans() -> None:
    inner, outer = E(2, 4, "LOC", 3.0), E(2, 6, "ORG", 5.0)  # 北京 inside 北京大学
    assert non_overlapping([inner, outer]) == [outer]
    assert non_overlapping([E(2, 4, "LOC", 6.0), outer]) == [E(2, 4, "LOC", 6.0)]  # the inner one may win


def test_flat_drops_partial_overlaps_of_any_label_and_keeps_disjoint_spans() -> None:
    ents = [E(0, 3, "PER", 1.0), E(2, 5, "LOC", 2.0), E(4, 7, "ORG", 1.5), E(7, 8, "LOC", -1.0)]
    # 2..5 wins; 0..3 and 4..7 cross it (different labels); 7..8 touches nothing kept
    assert non_overlapping(ents) == [E(2, 5, "LOC", 2.0), E(7, 8, "LOC", -1.0)]


def test_flat_adjacent_spans_do_not_overlap() -> None:
    ents = [E(2, 4, "LOC", 1.0), E(0, 2, "PER", 2.0), E(4, 6, "ORG", 0.5)]  # [0,2) [2,4) [4,6): end exclusive
    assert non_overlapping(ents) == sorted(ents, key=lambda e: (e.start, e.end, e.label))


def test_flat_same_span_two_labels_keeps_the_better_one() -> None:
    assert non_overlapping([E(2, 4, "LOC", 1.0), E(2, 4, "ORG", 2.0)]) == [E(2, 4, "ORG", 2.0)]


def test_flat_ties_go_by_start_end_label_whatever_the_input_order() -> None:
    ents = [E(3, 6, "LOC", 1.0), E(2, 4, "ORG", 1.0), E(2, 4, "LOC", 1.0), E(2, 5, "LOC", 1.0)]
    for order in (ents, ents[::-1], ents[1:] + ents[:1]):
        assert non_overlapping(order) == [E(2, 4, "LOC", 1.0)]  # (2,4,LOC) < (2,4,ORG) < (2,5,..) < (3,6,..)
    assert non_overlapping([E(0, 2, "A", 1.0), E(1, 3, "A", 1.0), E(2, 4, "A", 1.0)]) == [
        E(0, 2, "A", 1.0),
        E(2, 4, "A", 1.0),
    ]


def test_flat_empty_and_chain() -> None:
    assert non_overlapping([]) == []
    # a chain where the best span knocks out its neighbours, which lets the ends survive
    chain = [E(0, 2, "A", 1.0), E(1, 4, "A", 2.0), E(3, 6, "A", 3.0), E(5, 8, "A", 2.5), E(7, 8, "A", 0.1)]
    assert non_overlapping(chain) == [E(0, 2, "A", 1.0), E(3, 6, "A", 3.0), E(7, 8, "A", 0.1)]


@pytest.mark.parametrize("seed", range(5))
def test_flat_equals_the_definition_and_commutes_with_a_threshold(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ents = []
    for _ in range(40):
        s, n, label = int(rng.integers(0, 30)), int(rng.integers(1, 6)), str(rng.choice(["A", "B"]))
        ents.append(Entity(s, s + n, label, "", float(rng.integers(-4, 5))))
    ents = merge_entities([ents])  # one per (start, end, label), as after merging windows
    kept: list[Entity] = []  # the definition, pairwise
    for e in sorted(ents, key=lambda e: (-e.score, e.start, e.end, e.label)):
        if all(e.end <= k.start or k.end <= e.start for k in kept):
            kept.append(e)
    got = non_overlapping(ents)
    assert got == sorted(kept, key=lambda e: (e.start, e.end, e.label))
    for t in (-2.0, 0.0, 1.5):  # filter-then-flatten = flatten-then-filter (scores are integers: ties)
        assert non_overlapping([e for e in ents if e.score > t]) == [e for e in got if e.score > t]


def test_apply_decode() -> None:
    ents = [E(2, 4, "LOC", 3.0), E(2, 6, "ORG", 5.0)]
    assert apply_decode(ents, "nested") == ents and apply_decode(ents, "flat") == [E(2, 6, "ORG", 5.0)]
    assert spans.DECODES == ("nested", "flat")
    with pytest.raises(ValueError, match="unknown decode 'bogus'; choose from nested, flat"):
        apply_decode(ents, "bogus")  # type: ignore[arg-type]
