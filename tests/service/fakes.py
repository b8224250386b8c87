"""A fake :class:`service.runtime.Runtime` with known answers, for the tests that need them.

NER: a span scores ``10 + 0.01 * i`` (i = its first token's position in the row, so two windows
score the same entity differently) when its tokens spell a gazetteer word, else -10.
Similarity: a deterministic unit vector per row. Knobs: a delay per batch, a gate that blocks the
worker, failure on rows holding a given token id, a call that never returns (a hung ONNX Runtime call)
on rows holding another; every row it sees is recorded.
"""

from __future__ import annotations

import threading
import time

import numpy as np

GAZETTEER = {
    "北京": "LOC",
    "天安门": "LOC",
    "北京大学": "ORG",
    "中国银行": "ORG",
    "张三": "PER",
    "李四": "PER",
}


class FakeRuntime:
    provider = "fake"

    def __init__(
        self, tokenizer, labels, *, dim: int = 32, delay: float = 0.0, fail_on_id: int | None = None,
        hang_on_id: int | None = None,
    ):  # fmt: skip
        self.labels, self.dim, self.delay, self.fail_on_id = list(labels), dim, delay, fail_on_id
        self.hang_on_id = hang_on_id
        self.precision = {"ner": "fp32", "similarity": "fp32"}
        self.words = [
            (np.array([tokenizer.token_to_id(ch) for ch in word], dtype=np.int64), self.labels.index(label))
            for word, label in GAZETTEER.items()
        ]
        self.gate: threading.Event | None = None  # when set to an Event, run() waits for it
        self.entered = threading.Event()  # set whenever run() starts
        self.rows: list[tuple[str, tuple[int, ...]]] = []  # (task, real ids) of every row run
        self._lock = threading.Lock()

    def inputs(self, task: str) -> list[str]:
        return ["attention_mask", "input_ids"]  # not the usual order: core must feed by name

    def run(self, task: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]  # (B, T)
        with self._lock:
            self.rows += [(task, tuple(row[m.astype(bool)].tolist())) for row, m in zip(ids, mask)]
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.delay:
            time.sleep(self.delay)
        if self.hang_on_id is not None and (ids == self.hang_on_id).any():
            threading.Event().wait()  # never returns
        if self.fail_on_id is not None and (ids == self.fail_on_id).any():
            raise RuntimeError("fake model failure")
        return self._ner(ids, mask) if task == "ner" else self._embed(ids, mask)

    def _ner(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        B, T = ids.shape
        scores = np.full((B, len(self.labels), T, T), -10.0, dtype=np.float32)  # (B, C, T, T)
        for b in range(B):
            n = int(mask[b].sum())
            for word, c in self.words:
                for i in range(n - len(word) + 1):
                    if np.array_equal(ids[b, i : i + len(word)], word):
                        scores[b, c, i, i + len(word) - 1] = 10 + 0.01 * i
        return scores

    def _embed(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for b, (row, m) in enumerate(zip(ids, mask)):
            rng = np.random.default_rng(abs(hash(tuple(row[m.astype(bool)].tolist()))) % 2**32)
            v = rng.standard_normal(self.dim)
            out[b] = v / np.linalg.norm(v)
        return out


def fake_engine(bundle, **engine_kw):
    """An Engine over the tiny bundle's tokenizer and manifest, with a FakeRuntime (``similarity_only`` /
    ``ner_only``: the manifest without its NER / similarity task; ``ner_spec`` / ``similarity_spec``: another
    spec of that task; ``ner_max_length`` / ``ner_stride``: the NER windows)."""
    from models.bundle import load_manifest
    from models.text import Tokenizer
    from service.core import Engine

    manifest = load_manifest(bundle)
    tokenizer = Tokenizer.load(bundle / manifest.tokenizer)
    runtime_kw = {k: engine_kw.pop(k) for k in ("delay", "fail_on_id", "hang_on_id") if k in engine_kw}
    runtime = FakeRuntime(tokenizer, manifest.tasks["ner"].labels, dim=manifest.tasks["similarity"].dim, **runtime_kw)
    if engine_kw.pop("similarity_only", False):
        manifest = manifest.model_copy(update={"tasks": {"similarity": manifest.tasks["similarity"]}})
    if engine_kw.pop("ner_only", False):
        manifest = manifest.model_copy(update={"tasks": {"ner": manifest.tasks["ner"]}})
    for kind in ("ner", "similarity"):  # another spec (e.g. another decode, no whitening)
        if f"{kind}_spec" in engine_kw:
            spec = engine_kw.pop(f"{kind}_spec")
            manifest = manifest.model_copy(update={"tasks": manifest.tasks | {kind: spec}})
    options = {k: engine_kw.pop(k) for k in ("ner_max_length", "ner_stride") if k in engine_kw}
    if options:
        engine_kw["options"] = options
    return Engine(runtime, tokenizer, manifest, **engine_kw), runtime
