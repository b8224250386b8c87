"""Tiny random task checkpoints (2 layers, 32 dims) and one bundle exported from them, once per session.

The NER head's weights are scaled up (scores spread over a few units instead of ~0.01) and its
threshold put in a wide gap between sorted sample scores, so that a few spans per text decode and
small numeric changes (fp16, int8) do not flip them: entity comparisons are then not vacuous.
The similarity model pools with RoFormer-Sim's linear pooler and carries a fitted whitening (k=16).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from export.parity import SAMPLE_TEXTS
from models.bundle import Manifest
from models.roformer import RoFormerConfig, RoFormerEncoder
from models.tasks import NerConfig, NerModel, SimilarityConfig, SimilarityModel
from models.text import Tokenizer, pad_batch
from models.whitening import Whitening, fit_whitening

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LABELS = ("PER", "LOC", "ORG")
WHITENING_K = 16
# Texts of very different lengths: one padded batch exercises the masks.
PADDED_TEXTS = ["好", "李明在北京大学读书。", "张伟和王芳去上海旅游，住在外滩附近的和平饭店。", "我爱北京天安门！"]


@dataclass(frozen=True)
class Tiny:
    root: Path
    vocab: Path
    ner: Path  # checkpoint directories
    sim: Path
    bundle: Path  # fp32 + fp16 + int8 (static) + int8-dynamic, both tasks
    manifest: Manifest
    mu: np.ndarray  # whitening fitted on the similarity model's pooled vectors
    W: np.ndarray

    @property
    def tokenizer(self) -> Tokenizer:
        return Tokenizer.from_vocab(self.vocab)


def calibration_texts() -> list[str]:
    """The tiny models' "training data": the sample's sentences cut and recombined, plus the sample."""
    parts = [t[k : k + 9] for t in SAMPLE_TEXTS for k in range(0, len(t), 7)]
    return list(SAMPLE_TEXTS) + [a + b for a, b in zip(parts, parts[3:], strict=False)]


def calibration(*tasks: str):
    """``export_bundle(calibration=...)`` for ``tasks``: :func:`calibration_texts` as their training data."""
    from export.variants import CalibrationTexts

    return {task: CalibrationTexts("tiny calibration texts", calibration_texts()) for task in tasks}


def encoder_config(vocab_size: int, **options) -> RoFormerConfig:
    return RoFormerConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=128, **options)


def padded(tok: Tokenizer, texts=PADDED_TEXTS):
    encs = tok.encode_batch(list(texts))
    ids, mask = pad_batch([e.ids for e in encs], pad_id=tok.pad_id)
    return ids, mask, [e.offsets for e in encs]


def wide_gap_threshold(scores: np.ndarray, *, per_text: int, n_texts: int) -> float:
    """A threshold near the top ``per_text * n_texts`` scores, in the middle of the widest gap there."""
    s = np.sort(scores)[::-1]
    lo, hi = per_text * n_texts // 2, per_text * n_texts * 2
    gaps = s[lo:hi] - s[lo + 1 : hi + 1]
    k = lo + int(np.argmax(gaps))
    return float((s[k] + s[k + 1]) / 2)


def build_ner(root: Path, vocab: Path, tok: Tokenizer) -> Path:
    torch.manual_seed(1)
    model = NerModel(RoFormerEncoder(encoder_config(tok.vocab_size)),
                     NerConfig(labels=LABELS, head="gp", head_size=16, max_length=24, stride=12)).eval()
    with torch.no_grad():
        model.head.dense.weight.mul_(4.0)  # q and k x4: scores x16, spread over a few units
        ids, mask, _ = padded(tok, SAMPLE_TEXTS[:8])
        scores, _ = model(torch.from_numpy(ids), torch.from_numpy(mask))  # (B, C, T, T)
    real = scores.numpy()[scores.numpy() > -1e30]
    model.cfg = dataclasses.replace(model.cfg, threshold=wide_gap_threshold(real, per_text=3, n_texts=8))
    model.save(root / "ner", tokenizer_from=vocab)
    metrics = {"f1": 0.5, "precision": 0.25, "per_label": {"PER": 0.5}, "split": "dev", "curve": [1, 2]}
    (root / "ner" / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return root / "ner"


def build_sim(root: Path, vocab: Path, tok: Tokenizer) -> tuple[Path, np.ndarray, np.ndarray]:
    torch.manual_seed(2)
    model = SimilarityModel(RoFormerEncoder(encoder_config(tok.vocab_size)),
                            SimilarityConfig(pooling="linear", max_length=32)).eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, tok.vocab_size, (96, 12), generator=g)  # (N, T): random "sentences"
    mask = (torch.arange(12)[None, :] < torch.randint(3, 13, (96, 1), generator=g)).long()
    with torch.no_grad():
        pooled = model.pooled(ids * mask, mask).double().numpy()  # (N, H)
    mu, W = fit_whitening(pooled)
    model.whitening = Whitening(mu, W, k=WHITENING_K)
    model.save(root / "sim", tokenizer_from=vocab)
    return root / "sim", mu, W


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    from export.onnx import export_bundle

    root = tmp_path_factory.mktemp("export")
    chars = sorted({c for t in SAMPLE_TEXTS for c in t.lower() if not c.isspace()})
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + chars) + "\n", encoding="utf-8")
    tok = Tokenizer.from_vocab(vocab)
    ner = build_ner(root, vocab, tok)
    sim, mu, W = build_sim(root, vocab, tok)
    manifest = export_bundle(
        root / "bundle", ner=ner, similarity=sim, precisions=("fp32", "fp16", "int8", "int8-dynamic"), name="tiny",
        training_data=[("tiny-random", "CC0-1.0")], notes="test fixture", calibration=calibration("ner", "similarity"),
        calibration_size=64,
    )
    return Tiny(root=root, vocab=vocab, ner=ner, sim=sim, bundle=root / "bundle", manifest=manifest, mu=mu, W=W)


def session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
