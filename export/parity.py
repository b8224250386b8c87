"""Parity checks run at export: encode sample texts, run graphs, compare (numpy + onnxruntime).

Read top to bottom: sample texts -> Batch (padded rows of windows) -> running a graph -> NER
comparisons (scores on real spans, decoded entities) -> similarity comparisons (vectors, cosines).

What goes into ``GraphSpec.parity``:

* fp32 vs PyTorch: ``max_abs_diff`` over unmasked outputs only (NER: spans i <= j on real tokens;
  similarity: every vector component), plus for NER the entity agreement with PyTorch.
* every other variant vs its reference (``models.precisions``; fp32 for int8 and fp16): NER ``entity_f1`` (x100, agreement of the decoded entity sets,
  100 when both are empty), ``entities_changed`` (symmetric difference) and ``max_abs_diff``;
  similarity ``cosine_max_abs_diff`` / ``cosine_mean_abs_diff`` over all sample pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.spans import Decode, apply_decode, decode_batch, merge_entities
from models.text import Tokenizer, pad_batch

log = logging.getLogger(__name__)

# Varied Chinese sentences (people, places, organisations, dates, numbers, Latin script, full-width
# punctuation, emoji, a long one that needs several windows): used when no sample file is given.
SAMPLE_TEXTS: tuple[str, ...] = (
    "李明在北京大学读书。",
    "2023年5月，华为公司在深圳发布了新款手机Mate 60。",
    "张伟和王芳去上海旅游，住在外滩附近的和平饭店。",
    "中国人民银行宣布下调存款准备金率0.25个百分点。",
    "我爱北京天安门！",
    "苹果公司CEO蒂姆·库克访问了杭州的阿里巴巴总部。",
    "长江是亚洲第一长河，流经青海、西藏、四川、重庆、湖北等省市。",
    "今天天气很好😀，我们去公园散步吧。",
    "ＡＢＣ公司（全称：安邦保险集团）成立于２００４年。",
    "《红楼梦》是曹雪芹创作的章回体长篇小说。",
    "世界卫生组织总干事谭德塞在日内瓦召开新闻发布会。",
    "他说：“明天下午三点在清华大学东门见。”",
    "马云创办的阿里巴巴集团总部位于浙江省杭州市余杭区。",
    "这部手机的价格是3999元，比去年便宜了500元。",
    "好",
    (
        "第十四届全国人民代表大会第一次会议于2023年3月5日在北京人民大会堂开幕，"
        "国务院总理在会上作政府工作报告，回顾了过去五年的工作，提出了今年经济社会发展的主要目标，"
        "包括国内生产总值增长百分之五左右、城镇新增就业一千二百万人左右、居民消费价格涨幅百分之三左右，"
        "并就扩大国内需求、建设现代化产业体系、深化国有企业改革、稳定外资外贸等工作作出部署。"
    ),
)


@dataclass(frozen=True)
class Batch:
    """Padded model inputs plus, per row, where it came from (its text and the token offsets)."""

    input_ids: np.ndarray  # (B, T) int64
    attention_mask: np.ndarray  # (B, T) int64
    owners: list[int]  # row -> index of its text
    offsets: list[np.ndarray]  # row -> (n, 2) character offsets into its text

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def _batches(rows: list[tuple[int, np.ndarray, np.ndarray]], pad_id: int, batch_size: int) -> list[Batch]:
    out = []
    for k in range(0, len(rows), batch_size):
        chunk = rows[k : k + batch_size]
        ids, mask = pad_batch([r[1] for r in chunk], pad_id=pad_id)
        out.append(Batch(ids, mask, [r[0] for r in chunk], [r[2] for r in chunk]))
    return out


def ner_batches(tok: Tokenizer, texts: Sequence[str], *, max_length: int, stride: int,
                batch_size: int = 8) -> list[Batch]:
    """Every window of every text (as the service cuts them), in padded batches."""
    rows = [(t, w.ids, w.offsets) for t, text in enumerate(texts)
            for w in tok.encode_windows(text, max_length=max_length, stride=stride)]
    return _batches(rows, tok.pad_id, batch_size)


def sim_batches(tok: Tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int = 8) -> list[Batch]:
    """One row per text, cut to ``max_length`` tokens (``[SEP]`` kept last), in padded batches."""
    rows = []
    for t, enc in enumerate(tok.encode_batch(list(texts))):
        ids, offsets = enc.ids, enc.offsets
        if len(ids) > max_length:
            ids = np.concatenate([ids[: max_length - 1], ids[-1:]])
            offsets = np.concatenate([offsets[: max_length - 1], offsets[-1:]])
        rows.append((t, ids, offsets))
    return _batches(rows, tok.pad_id, batch_size)


# --------------------------------------------------------------------------------------------
# Running graphs
# --------------------------------------------------------------------------------------------

Runner = Callable[[Batch], np.ndarray]


def onnx_runner(path: str | Path, *, threads: int = 0) -> Runner:
    """A function Batch -> first output of an ONNX graph on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(batch: Batch) -> np.ndarray:
        return session.run(None, {n: batch.feeds[n] for n in names})[0]

    return run


def run_all(runner: Runner, batches: Sequence[Batch]) -> list[np.ndarray]:
    return [np.asarray(runner(b)) for b in batches]


# --------------------------------------------------------------------------------------------
# NER
# --------------------------------------------------------------------------------------------


def span_mask(attention_mask: np.ndarray) -> np.ndarray:
    """(B, 1, T, T) bool: spans i <= j with both ends on real tokens (the unmasked scores)."""
    real = attention_mask.astype(bool)  # (B, T)
    T = real.shape[1]
    return (real[:, None, :, None] & real[:, None, None, :]) & np.triu(np.ones((T, T), dtype=bool))


def max_abs_diff_spans(a: Sequence[np.ndarray], b: Sequence[np.ndarray], batches: Sequence[Batch]) -> float:
    worst = 0.0
    for x, y, batch in zip(a, b, batches):
        keep = np.broadcast_to(span_mask(batch.attention_mask), x.shape)
        if keep.any():
            worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64))[keep].max()))
    return worst


EntityKey = tuple[int, int, int, str]  # (text index, start, end, label)


def decode_entities(outputs: Sequence[np.ndarray], batches: Sequence[Batch], *, texts: Sequence[str],
                    labels: Sequence[str], threshold: float, decode: Decode = "nested") -> set[EntityKey]:
    """Decode every window, merge per text and apply ``decode``, as the service does; a set of
    (text, start, end, label)."""
    per_text: dict[int, list] = {}
    for scores, batch in zip(outputs, batches):
        row_texts = [texts[t] for t in batch.owners]
        decoded = decode_batch(scores, offsets_list=batch.offsets, labels=labels, texts=row_texts,
                               threshold=threshold)
        for owner, ents in zip(batch.owners, decoded):
            per_text.setdefault(owner, []).append(ents)
    return {(t, e.start, e.end, e.label) for t, groups in per_text.items()
            for e in apply_decode(merge_entities(groups), decode)}


def entity_agreement(ref: set[EntityKey], got: set[EntityKey]) -> dict[str, float | int]:
    """F1 x 100 of ``got`` against ``ref`` (100 when both are empty) and the count of changed entities."""
    both = len(ref & got)
    f1 = 100.0 if not ref and not got else 200.0 * both / (len(ref) + len(got))
    return {"entity_f1": round(f1, 3), "entities_changed": len(ref ^ got), "entities": len(got)}


# --------------------------------------------------------------------------------------------
# Similarity
# --------------------------------------------------------------------------------------------


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()) for x, y in zip(a, b))


def cosine_diffs(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Max and mean |cos_ref - cos_got| over all pairs i < j of the sample vectors (rows L2-normalised)."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    n = len(ref)
    if n < 2:
        return {"cosine_max_abs_diff": 0.0, "cosine_mean_abs_diff": 0.0}
    iu = np.triu_indices(n, k=1)
    d = np.abs((ref @ ref.T)[iu] - (got @ got.T)[iu])
    return {"cosine_max_abs_diff": float(d.max()), "cosine_mean_abs_diff": float(d.mean())}


def read_sample_file(path: str | Path) -> list[str]:
    """Sample texts from a file: one text per line, or JSONL objects with a ``text`` field (``.jsonl``)."""
    import json

    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix != ".jsonl":
        return lines
    texts = []
    for n, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON: {e}") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ValueError(f"{path}:{n}: expected an object with a string field \"text\"")  # noqa: TRY004
        texts.append(item["text"])
    return texts
