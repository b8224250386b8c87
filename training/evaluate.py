"""Evaluation on labelled files: NER exact-span scores and similarity Spearman/Pearson, of whatever
predicts: a PyTorch task checkpoint here (:class:`NerCheckpoint`, :class:`SimCheckpoint`), or an
ONNX bundle through the service's own engine (``ropenlp.evaluate``: training never imports the service).

Read top to bottom: predictors -> NER (read -> predict -> exact-span scores) -> similarity (read pairs
-> cosines -> Spearman/Pearson per file) -> rich tables.

A checkpoint and a bundle of it (fp32, int8, ...) predict through the same windows and merge, so
their metrics compare directly: the difference is the graph's numerics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from training.data import ReadReport
from training.metrics import macro_f1, ner_scores, similarity_scores

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Predictors: what evaluation asks of a model
# --------------------------------------------------------------------------------------------


class NerPredictor(Protocol):
    """An NER model to evaluate: its settings and its entities (nested, at a threshold)."""

    source: dict[str, Any]  # how the metrics JSON names it: {"model": path} or {"bundle": ..., ...}
    tokenizer: Any  # models.text.Tokenizer: gold spans are aligned with its tokens
    labels: Sequence[str]
    max_length: int
    stride: int
    threshold: float
    decode: str

    def entities(self, texts: Sequence[str], threshold: float) -> list[list]: ...


class SimPredictor(Protocol):
    source: dict[str, Any]

    def cosines(self, pairs: Sequence[Any]) -> Sequence[float]: ...  # training.pairs.PairRecord each


def _checkpoint(load, path: str | Path, *, device: str, threads: int = 0):
    """A PyTorch task checkpoint (``load``: :func:`models.tasks.load_ner` or ``load_similarity``) on
    ``device``, and its tokenizer."""
    import torch

    from models.normalize import normalizer_for
    from models.tasks import read_task, tokenizer_file
    from models.text import Tokenizer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = Tokenizer.load(tokenizer_file(path)).normalizing(normalizer_for(read_task(path).get("normalize")))
    return load(path).to(device), tokenizer


@dataclass
class NerCheckpoint:
    """A PyTorch NER checkpoint as a :class:`NerPredictor` (the service's windows and merge)."""

    path: str | Path
    device: str = "cpu"
    batch_tokens: int = 8192
    threads: int = 0

    def __post_init__(self) -> None:
        from models.tasks import load_ner

        self.net, self.tokenizer = _checkpoint(load_ner, self.path, device=self.device, threads=self.threads)
        cfg = self.net.cfg
        self.source = {"model": str(self.path)}
        self.labels, self.max_length, self.stride = cfg.labels, cfg.max_length, cfg.stride
        self.threshold, self.decode = cfg.threshold, cfg.decode

    def entities(self, texts: Sequence[str], threshold: float) -> list[list]:
        from training.ner import predict_entities

        return predict_entities(self.net, self.tokenizer, texts, threshold=threshold, decode="nested",
                                batch_tokens=self.batch_tokens, device=self.device)


@dataclass
class SimCheckpoint:
    """A PyTorch similarity checkpoint as a :class:`SimPredictor`."""

    path: str | Path
    device: str = "cpu"
    batch_tokens: int = 8192
    threads: int = 0

    def __post_init__(self) -> None:
        from models.tasks import load_similarity

        self.net, self.tokenizer = _checkpoint(load_similarity, self.path, device=self.device, threads=self.threads)
        self.source = {"model": str(self.path), "dim": self.net.dim, "pooling": self.net.cfg.pooling}

    def cosines(self, pairs) -> Sequence[float]:
        from training.similarity import pair_cosines

        return pair_cosines(self.net, self.tokenizer, pairs, batch_tokens=self.batch_tokens, device=self.device)


# --------------------------------------------------------------------------------------------
# NER
# --------------------------------------------------------------------------------------------


def evaluate_ner(data: Sequence[str], *, model: str | Path | None = None, predictor: NerPredictor | None = None,
                 format: str = "auto", threshold: float | None = None, decode: str | None = None,
                 device: str = "cpu", batch_tokens: int = 8192, on_error: str = "raise", threads: int = 0,
                 threshold_grid: Sequence[float] | None = None) -> dict:
    """Exact-span micro / per-type / nested scores of a checkpoint (``model``) or any ``predictor`` (a
    bundle: ``ropenlp.evaluate``) on NER files, decoded at ``threshold`` in mode ``decode`` ("nested" or
    "flat"); both default to the model's.

    ``threshold_grid``: instead of one threshold, score every grid value and report the best
    (``training.ner.calibrate``: one prediction pass at the lowest). Tuned on the data it reports on,
    so an optimistic figure, for comparing models each at its best threshold (the JSON says so)."""
    from models.spans import check_decode
    from training.ner import calibrate, gold_spans, pred_spans, summary
    from training.ner_data import align_records, read_ner

    if (model is None) == (predictor is None):
        raise ValueError("give exactly one of --model (a PyTorch checkpoint) or --bundle (an ONNX bundle)")
    if decode is not None:
        check_decode(decode)
    report = ReadReport()
    records = list(read_ner(data, report, format=format))
    report.check(on_error)
    if not records:
        raise ValueError(f"no records in {', '.join(map(str, data))}")
    texts = [r.text for r in records]
    if threshold_grid is not None:
        if threshold is not None:
            raise ValueError("give --threshold or --threshold-grid, not both")
        if not threshold_grid:
            raise ValueError("--threshold-grid needs at least one value")
    t0 = time.perf_counter()
    p = predictor if predictor is not None else NerCheckpoint(model, device=device, batch_tokens=batch_tokens,
                                                              threads=threads)
    labels, max_length, stride = p.labels, p.max_length, p.stride
    threshold = p.threshold if threshold is None else threshold
    decode = p.decode if decode is None else decode
    entities = p.entities(texts, min(threshold_grid or [threshold]))
    seconds = time.perf_counter() - t0
    _, stats = align_records(records, p.tokenizer, labels, max_length=max_length, stride=stride)
    grid = {}
    # entities are decoded nested at the lowest threshold asked for; pred_spans filters by score, then applies
    # ``decode`` per merged text (what decoding at that threshold in that mode gives)
    if threshold_grid:
        threshold, grid = calibrate(gold_spans(records), entities, threshold_grid, labels, prefer=threshold,
                                    decode=decode)
    scores = ner_scores(gold_spans(records), pred_spans(entities, threshold, decode), labels)
    return {"task": "ner", **p.source, "data": [str(d) for d in data], "read": report.summary(),
            "threshold": threshold, "decode": decode, "max_length": max_length, "stride": stride,
            **({"threshold_tuned_on_this_data": True, "f1_by_threshold": grid} if grid else {}),
            **summary(scores), "scores": scores,
            "gold_not_targetable": {"misaligned": stats.misaligned, "lost": stats.lost,
                                    "unknown_label": stats.unknown_label, "examples": stats.examples},
            "seconds": round(seconds, 3), "texts_per_s": round(len(texts) / max(seconds, 1e-9), 1)}


# --------------------------------------------------------------------------------------------
# Similarity
# --------------------------------------------------------------------------------------------


def evaluate_sim(data: Sequence[str], *, model: str | Path | None = None, predictor: SimPredictor | None = None,
                 format: str = "auto", device: str = "cpu", batch_tokens: int = 8192, on_error: str = "raise",
                 threads: int = 0) -> dict:
    """Spearman / Pearson x 100 per pair file (and their mean) of a checkpoint or any ``predictor``."""
    from training.data import expand_paths
    from training.pairs import PairSource, read_pair_file

    if (model is None) == (predictor is None):
        raise ValueError("give exactly one of --model (a PyTorch checkpoint) or --bundle (an ONNX bundle)")
    if format not in ("auto", "tsv", "jsonl"):
        raise ValueError(f"unknown pair format {format!r}; choose from auto, tsv, jsonl")
    report = ReadReport()
    files = {str(p): list(read_pair_file(p, report, PairSource(paths=(str(p),), format=format)))
             for p in expand_paths(data)}
    report.check(on_error)
    t0 = time.perf_counter()
    p = predictor if predictor is not None else SimCheckpoint(model, device=device, batch_tokens=batch_tokens,
                                                              threads=threads)
    cosines = {name: p.cosines(recs) for name, recs in files.items()}
    seconds = time.perf_counter() - t0
    per_file = {name: similarity_scores(cosines[name], [r.label for r in recs]) for name, recs in files.items()}
    mean = sum(v["spearman"] for v in per_file.values()) / max(len(per_file), 1)
    return {"task": "similarity", **p.source, "data": list(files), "read": report.summary(), "spearman_mean": mean,
            "files": per_file, "seconds": round(seconds, 3)}


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _source(metrics: dict) -> str:
    if "bundle" in metrics:
        return f"bundle {metrics['bundle']} ({metrics.get('graph_precision')})"
    return str(metrics["model"])


def ner_table(metrics: dict):
    from rich.table import Table

    s = metrics["scores"]
    title = f"NER: {_source(metrics)} (threshold {metrics['threshold']:g}, {metrics['decode']} decode)"
    table = Table(title=title)
    for col in ("type", "precision", "recall", "F1", "gold", "predicted"):
        table.add_column(col, justify="left" if col == "type" else "right")
    for label, v in s["per_type"].items():
        table.add_row(label, f"{100 * v['precision']:.2f}", f"{100 * v['recall']:.2f}", f"{100 * v['f1']:.2f}",
                      str(v["support"]), str(v["predicted"]))
    table.add_section()
    table.add_row("micro", f"{100 * s['precision']:.2f}", f"{100 * s['recall']:.2f}", f"{100 * s['f1']:.2f}",
                  str(s["gold"]), str(s["predicted"]), style="bold")
    table.add_row("macro", "", "", f"{100 * macro_f1(s['per_type']):.2f}", "", "")
    n = s["nested"]
    table.add_row("nested only", f"{100 * n['precision']:.2f}", f"{100 * n['recall']:.2f}", f"{100 * n['f1']:.2f}",
                  str(n["gold"]), str(n["predicted"]))
    return table


def sim_table(metrics: dict):
    from rich.table import Table

    table = Table(title=f"Similarity: {_source(metrics)}")
    for col in ("file", "pairs", "Spearman x100", "Pearson x100"):
        table.add_column(col, justify="left" if col == "file" else "right")
    for name, v in metrics["files"].items():
        table.add_row(name, str(v["pairs"]), f"{v['spearman']:.2f}", f"{v['pearson']:.2f}")
    if len(metrics["files"]) > 1:
        table.add_section()
        table.add_row("mean", "", f"{metrics['spearman_mean']:.2f}", "", style="bold")
    return table
