"""NER fine-tuning: RoFormer encoder + GlobalPointer / Efficient GlobalPointer, nested or flat alike.

Read top to bottom: config sections -> targets (dense or sparse) -> prediction in the service's
windows + merge -> evaluation -> threshold calibration -> ``train_ner``, the function behind
``ropenlp train ner``.

Training examples are the windows of each text (``Tokenizer.encode_windows``, one window for a
short text); an entity is a target in every window that holds it whole. Evaluation cuts dev texts
into the same windows the service uses (``NerConfig.max_length`` / ``stride``), decodes every
window with :func:`models.spans.decode_batch` and merges them with
:func:`models.spans.merge_entities`, then applies the decoding mode (``NerConfig.decode``: "nested"
keeps every span, "flat" only non-overlapping ones, :func:`models.spans.apply_decode`) and scores
exact spans (:mod:`training.metrics`). ``ner.decode = "auto"`` picks "flat" when no two gold spans
of a training text overlap, else "nested".

Output folder (``output.dir``)::

    config.resolved.toml  vocab.txt  data_report.json  log.jsonl  metrics.json
    best/        NerModel.save + metrics.json (dev scores): the checkpoint to export
    model/       the weights at the last step
    checkpoints/ step-N/ for --resume
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from models.global_pointer import HeadKind
from models.spans import DECODES, Decode, Entity, apply_decode, decode_batch, merge_entities
from models.tasks import NerConfig, NerModel, load_ner
from models.normalize import Normalize, normalizer_for
from models.text import Tokenizer, pad_batch
from training.config import OutputConfig, TrainingConfig, load_config, to_dict
from training.data import ReadReport, expand_paths, settle_reports, write_json
from training.average import Rechoose, register_rechoose
from training.batches import EpochBatches
from training.encoders import (ModelInit, TaskOptions, VocabConfig, build_encoder, check_length, fit_task,
                               length_batches, tokenizer_for)
from training.loop import (METRICS_FILE, FitResult, best_metrics, finish_run, new_weights_rng, open_run,
                           write_run_config)
from training.metrics import macro_f1, ner_scores
from training.ner_data import NerExample, NerFormat, NerRecord, align_records, labels_of, read_ner

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NerDataConfig:
    """``[data]``: labelled files (globs, under ``root``) and the windows texts are cut into."""

    root: str = "."
    train: tuple[str, ...] = ()
    dev: tuple[str, ...] = ()
    format: NerFormat = "auto"  # cluener, cmeee (JSON lines or a JSON array), spans, bio / bioes columns
    labels: tuple[str, ...] = ()  # () = the types found in the training files, sorted
    max_length: int = 256  # tokens per window, [CLS]/[SEP] included (saved with the model)
    stride: int = 128  # tokens between window starts (saved with the model)
    on_error: Literal["raise", "skip"] = "raise"  # unreadable records: stop, or skip them and report

    def __post_init__(self):
        if not 0 < self.stride <= self.max_length - 2:
            raise ValueError(f"data.stride must be in 1..max_length-2 ({self.max_length - 2}), got {self.stride}")


@dataclass(frozen=True)
class NerModelConfig(ModelInit):
    """``[model]``: the encoder (see :class:`training.encoders.ModelInit`) and the span head."""

    head: HeadKind = "egp"  # "gp": GlobalPointer, "egp": Efficient GlobalPointer
    head_size: int = 64


@dataclass(frozen=True)
class NerOptions(TaskOptions):
    """``[ner]``: what is specific to NER training (the head is the span head; see :class:`TaskOptions`)."""

    loss: Literal["auto", "dense", "sparse"] = "auto"  # targets as (B,C,T,T) or gold span indices
    sparse_from: int = 128  # auto: sparse targets when the batch is at least this many tokens long
    threshold: float = 0.0  # decoding threshold on span logits (saved with the model)
    decode: Literal["auto", "nested", "flat"] = "auto"  # auto: flat when no gold spans overlap (saved)
    calibrate_threshold: bool = False  # at the end: best dev F1 over threshold_grid, saved in best/
    threshold_grid: tuple[float, ...] = (-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0)
    bucket: int = 50  # sort windows by length within pools of this many batches (0 = off)
    normalize: str = "none"  # none | width | t2s | width,t2s before the tokenizer (models.normalize; saved, exported)

    def __post_init__(self):
        super().__post_init__()
        Normalize.parse(self.normalize)
        if self.calibrate_threshold and not self.threshold_grid:
            raise ValueError("ner.calibrate_threshold needs a non-empty ner.threshold_grid")


@dataclass(frozen=True)
class NerRunConfig:
    data: NerDataConfig = field(default_factory=NerDataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: NerModelConfig = field(default_factory=NerModelConfig)
    ner: NerOptions = field(default_factory=NerOptions)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=lambda: OutputConfig(dir="runs/ner"))


def load_ner_config(path: str | Path | None, overrides=()) -> NerRunConfig:
    return load_config(NerRunConfig, path, overrides)


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


class NerCollator:
    """Pads windows; targets dense (B, C, T, T) bool or sparse (B, C, K) flat indices i*T+j (-1 padded)."""

    def __init__(self, pad_id: int, num_types: int, *, loss: str = "auto", sparse_from: int = 128):
        self.pad_id, self.num_types, self.loss, self.sparse_from = pad_id, num_types, loss, sparse_from

    def __call__(self, examples: list[NerExample], generator: torch.Generator | None = None) -> dict:
        ids, mask = pad_batch([e.ids for e in examples], pad_id=self.pad_id)  # (B, T) each
        B, T, C = ids.shape[0], ids.shape[1], self.num_types
        sparse = self.loss == "sparse" or (self.loss == "auto" and T >= self.sparse_from)
        if sparse:
            counts = np.zeros((B, C), dtype=np.int64)
            for b, e in enumerate(examples):
                np.add.at(counts[b], e.spans[:, 0], 1)
            targets = np.full((B, C, max(int(counts.max()), 1)), -1, dtype=np.int64)  # (B, C, K)
            for b, e in enumerate(examples):
                fill = np.zeros(C, dtype=np.int64)
                for c, i, j in e.spans.tolist():
                    targets[b, c, fill[c]] = i * T + j
                    fill[c] += 1
            t = torch.from_numpy(targets)
        else:
            dense = np.zeros((B, C, T, T), dtype=bool)  # (B, C, T, T)
            for b, e in enumerate(examples):
                dense[b, e.spans[:, 0], e.spans[:, 1], e.spans[:, 2]] = True
            t = torch.from_numpy(dense)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask), "targets": t}


# --------------------------------------------------------------------------------------------
# Prediction: the service's windows and merge
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def predict_entities(model: NerModel, tokenizer: Tokenizer, texts: Sequence[str], *,
                     threshold: float | None = None, decode: Decode | None = None, batch_tokens: int = 8192,
                     device: torch.device | str = "cpu") -> list[list[Entity]]:
    """Entities of each text: windows of ``model.cfg.max_length`` every ``stride`` tokens, every span
    scoring above ``threshold`` (default the model's), windows merged (best score per span), then
    ``decode`` (default the model's; "flat": non-overlapping spans only) applied per text."""
    threshold = model.cfg.threshold if threshold is None else threshold
    decode = model.cfg.decode if decode is None else decode
    rows = [(t, w) for t, text in enumerate(texts)
            for w in tokenizer.encode_windows(text, max_length=model.cfg.max_length, stride=model.cfg.stride)]
    groups: list[list[list[Entity]]] = [[] for _ in texts]
    was_training = model.training
    model.eval()
    for batch in length_batches([len(w) for _, w in rows], batch_tokens=batch_tokens):
        part = [rows[k] for k in batch]
        ids, mask = pad_batch([w.ids for _, w in part], pad_id=tokenizer.pad_id)  # (B, T) each
        scores, _ = model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))  # (B, C, T, T)
        decoded = decode_batch(scores.float().cpu().numpy(), offsets_list=[w.offsets for _, w in part],
                               labels=model.cfg.labels, texts=[texts[t] for t, _ in part], threshold=threshold)
        for (t, _), ents in zip(part, decoded):
            groups[t].append(ents)
    model.train(was_training)
    return [apply_decode(g[0] if len(g) == 1 else merge_entities(g), decode) for g in groups]


def gold_spans(records: Sequence[NerRecord]) -> list[list[tuple[int, int, str]]]:
    return [[(s.start, s.end, s.label) for s in r.spans] for r in records]


def pred_spans(entities: Sequence[Sequence[Entity]], threshold: float | None = None, decode: Decode = "nested"
               ) -> list[list[tuple[int, int, str]]]:
    """Spans of predicted entities (windows merged), optionally only those scoring above ``threshold``,
    then ``decode`` applied: what decoding at ``threshold`` in that mode gives."""
    return [[(e.start, e.end, e.label)
             for e in apply_decode([e for e in ents if threshold is None or e.score > threshold], decode)]
            for ents in entities]


def overlapping_gold(records: Sequence[NerRecord]) -> tuple[int, int]:
    """(gold spans sharing a character with another gold span of their text, texts holding any)."""
    spans = texts = 0
    for r in records:
        n = sum(any(a is not b and a.start < b.end and b.start < a.end for b in r.spans) for a in r.spans)
        spans, texts = spans + n, texts + (n > 0)
    return spans, texts


FLAT_DATA_SHARE = 0.01  # "auto": flat when at most 1 % of the training texts have overlapping gold spans


def choose_decode(option: str, records: Sequence[NerRecord]) -> Decode:
    """``ner.decode``: "nested" / "flat" as given; "auto": "flat" when at most :data:`FLAT_DATA_SHARE` of the
    training texts have two gold spans that overlap (nested, crossing or the same span under two labels),
    else "nested". The tolerance is for annotation slips in flat data: CLUENER's 9,674 training texts have
    one such text, CMeEE's 13,500 have 1,501."""
    if option != "auto":
        return option  # type: ignore[return-value]
    spans, texts = overlapping_gold(records)
    decode: Decode = "nested" if texts > FLAT_DATA_SHARE * len(records) else "flat"
    log.info("ner.decode = auto: %d overlapping gold spans in %d of %d training texts -> %s", spans, texts,
             len(records), decode)
    return decode


def summary(scores: dict) -> dict:
    """The flat numbers logged at each evaluation (the full table goes to metrics.json)."""
    return {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
            "macro_f1": macro_f1(scores["per_type"]), "nested_f1": scores["nested"]["f1"],
            "predicted": scores["predicted"], "gold": scores["gold"]}


def calibrate(gold: Sequence[Sequence[tuple]], entities: Sequence[Sequence[Entity]], grid: Sequence[float],
              labels: Sequence[str], *, prefer: float = 0.0, decode: Decode = "nested"
              ) -> tuple[float, dict[str, float]]:
    """The grid threshold with the best micro F1 (ties: the one closest to ``prefer``), and F1 per
    threshold, decoding in mode ``decode``. ``entities`` must be decoded "nested" at a threshold no
    higher than ``min(grid)``: merging keeps each span's best window score, so filtering merged
    entities by score, then applying ``decode`` (:func:`pred_spans`), equals decoding higher."""
    f1 = {t: ner_scores(gold, pred_spans(entities, t, decode), labels)["f1"] for t in sorted(grid)}
    best = max(f1, key=lambda t: (f1[t], -abs(t - prefer)))
    return best, {f"{t:g}": v for t, v in f1.items()}


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


def _read(paths: Sequence[str], cfg: NerDataConfig, report: ReadReport) -> list[NerRecord]:
    return list(read_ner(paths, report, format=cfg.format, root=cfg.root)) if paths else []


def train_ner(cfg: NerRunConfig, *, resume: bool = False) -> FitResult:
    """Fine-tune as configured; writes everything under ``cfg.output.dir`` (module docstring)."""
    if not cfg.data.train:
        raise ValueError("no data.train files configured")
    both = ({p.resolve() for p in expand_paths(cfg.data.train, root=cfg.data.root)}
            & {p.resolve() for p in expand_paths(cfg.data.dev, root=cfg.data.root)})
    if both:
        raise ValueError(f"{', '.join(map(str, sorted(both)))}: listed in data.train and data.dev; a dev score on "
                         "training data means nothing")
    run = open_run(cfg.output.dir, cfg.training, resume=resume)
    out = run.out

    train_report, dev_report = ReadReport(), ReadReport()
    train_recs = _read(cfg.data.train, cfg.data, train_report)
    dev_recs = _read(cfg.data.dev, cfg.data, dev_report)
    settle_reports(out / "data_report.json", cfg.data.on_error, train=train_report, dev=dev_report)
    if not train_recs:
        raise ValueError(f"no training records in {', '.join(cfg.data.train)}")

    labels = cfg.data.labels or labels_of(train_recs)
    unknown = sorted(set(labels_of(train_recs)) - set(labels)) if cfg.data.labels else []
    if unknown:
        raise ValueError(f"the training data has entity types {unknown} that data.labels does not list")
    tokenizer, tok_path = tokenizer_for(cfg.model.init, cfg.vocab, out, lambda: (r.text for r in train_recs),
                                        resuming=run.resuming)
    tokenizer = tokenizer.normalizing(normalizer_for(cfg.ner.normalize))  # offsets stay those of the text
    decode = choose_decode(cfg.ner.decode, train_recs)
    task_cfg = NerConfig(labels=tuple(labels), head=cfg.model.head, head_size=cfg.model.head_size,
                         threshold=cfg.ner.threshold, max_length=cfg.data.max_length, stride=cfg.data.stride,
                         decode=decode, normalize=Normalize.parse(cfg.ner.normalize).describe())
    with new_weights_rng(cfg.training):
        encoder = build_encoder(cfg.model, tokenizer.vocab_size)
        model = NerModel(encoder, task_cfg)
    check_length(cfg.data.max_length, encoder)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=encoder.cfg),
                              data=dataclasses.replace(cfg.data, labels=tuple(labels)))  # as built
    write_run_config(out, cfg, resuming=run.resuming)

    examples, train_stats = align_records(train_recs, tokenizer, labels, max_length=cfg.data.max_length,
                                          stride=cfg.data.stride)
    train_stats.log("train")
    _, dev_stats = align_records(dev_recs, tokenizer, labels, max_length=cfg.data.max_length,
                                 stride=cfg.data.stride)
    if dev_recs:
        dev_stats.log("dev")
    collate = NerCollator(tokenizer.pad_id, len(labels), loss=cfg.ner.loss, sparse_from=cfg.ner.sparse_from)
    batches = EpochBatches(examples, collate=collate, lengths=[len(e) for e in examples],
                           batch_size=cfg.training.batch_size, batch_tokens=cfg.training.batch_tokens,
                           bucket=cfg.ner.bucket, seed=cfg.training.seed)
    log.info("%d training windows from %d texts; %d dev texts; labels %s", len(examples), len(train_recs),
             len(dev_recs), list(labels))

    gold = gold_spans(dev_recs)
    dev_texts = [r.text for r in dev_recs]
    last: dict = {}

    def evaluate() -> dict:
        ents = predict_entities(model, tokenizer, dev_texts, decode="nested",
                                batch_tokens=cfg.ner.eval_batch_tokens, device=run.device)
        by_decode = {d: ner_scores(gold, pred_spans(ents, decode=d), labels) for d in DECODES}
        last.clear()
        last.update(by_decode)
        return summary(by_decode[decode])

    def save_model(folder: Path) -> None:
        model.save(folder, tokenizer_from=tok_path)
        write_json(folder / METRICS_FILE, _checkpoint_metrics(last, dev_stats, model.cfg))

    t0 = time.perf_counter()
    result = fit_task(model, batches, run, cfg.training, head=model.head, head_lr=cfg.ner.head_lr,
                      ema_decay=cfg.ner.ema_decay, eval_every_epoch=cfg.ner.eval_every_epoch,
                      evaluate=evaluate if dev_recs else None, metric="f1", save_model=save_model)
    seconds = time.perf_counter() - t0

    calibration = None
    if cfg.ner.calibrate_threshold and dev_recs and (out / "best").is_dir():
        calibration, _ = calibrate_checkpoint(out / "best", dev_recs, cfg.ner.threshold_grid, device=run.device,
                                              batch_tokens=cfg.ner.eval_batch_tokens, dev_stats=dev_stats)
    finish_run(run, result, {
        "best_dev": best_metrics(out), "calibration": calibration,
        "data": {"train": train_stats.to_dict(), "dev": dev_stats.to_dict(),
                 "read": {"train": train_report.summary(), "dev": dev_report.summary()},
                 "steps_per_epoch": batches.steps_per_epoch},
        "seconds": round(seconds, 1), "config": to_dict(cfg)})
    return result


def _checkpoint_metrics(by_decode: dict[str, dict], dev_stats, task_cfg: NerConfig) -> dict:
    """metrics.json beside a checkpoint (the export copies it into the bundle manifest): the dev
    scores in the checkpoint's decoding mode, and the dev F1 of every mode at its threshold."""
    if not by_decode:
        return {"threshold": task_cfg.threshold, "decode": task_cfg.decode}
    scores = by_decode[task_cfg.decode]
    return {"dev_f1": scores["f1"], "dev_precision": scores["precision"], "dev_recall": scores["recall"],
            "dev_nested_f1": scores["nested"]["f1"], "dev_macro_f1": macro_f1(scores["per_type"]),
            "threshold": task_cfg.threshold, "decode": task_cfg.decode,
            "dev_f1_by_decode": {d: s["f1"] for d, s in by_decode.items()}, "dev": scores,
            "dev_gold_not_targetable": {"misaligned": dev_stats.misaligned, "lost": dev_stats.lost,
                                        "unknown_label": dev_stats.unknown_label}}


def calibrate_checkpoint(path: Path, dev_recs: Sequence[NerRecord], grid: Sequence[float], *,
                         device: torch.device | str = "cpu", batch_tokens: int = 8192,
                         dev_stats=None) -> tuple[dict, dict]:
    """Pick the dev-F1-best threshold of ``grid`` for the checkpoint at ``path`` (in its decoding mode)
    and save it there with its ``metrics.json`` (the dev F1 of every decoding mode at that threshold too).
    ``dev_stats``: the dev records' alignment counts when the caller has them (else counted here). Returns
    the calibration record and the metrics written."""
    model = load_ner(path).to(device)
    tokenizer = Tokenizer.load(path).normalizing(normalizer_for(model.cfg.normalize))
    ents = predict_entities(model, tokenizer, [r.text for r in dev_recs], threshold=min(grid),
                            decode="nested", batch_tokens=batch_tokens, device=device)
    gold = gold_spans(dev_recs)
    before, decode = model.cfg.threshold, model.cfg.decode
    best, f1 = calibrate(gold, ents, grid, model.cfg.labels, prefer=before, decode=decode)
    model.cfg = dataclasses.replace(model.cfg, threshold=best)
    model.save(path)
    by_decode = {d: ner_scores(gold, pred_spans(ents, best, d), model.cfg.labels) for d in DECODES}
    if dev_stats is None:  # the gold spans no window can hold, counted as training counts them
        _, dev_stats = align_records(dev_recs, tokenizer, model.cfg.labels, max_length=model.cfg.max_length,
                                     stride=model.cfg.stride)
    metrics = _checkpoint_metrics(by_decode, dev_stats, model.cfg) | {"threshold_f1": f1}
    write_json(path / METRICS_FILE, metrics)
    f1_by_decode = {d: s["f1"] for d, s in by_decode.items()}
    log.info("threshold calibrated on dev (decode %s): %g (F1 %.4f; was %g) - F1 by threshold %s; "
             "F1 by decode at %g: %s", decode, best, f1[f"{best:g}"], before, f1, best, f1_by_decode)
    return {"threshold": best, "previous": before, "decode": decode, "f1_by_threshold": f1,
            "dev_f1": by_decode[decode]["f1"], "dev_f1_by_decode": f1_by_decode}, metrics


# --------------------------------------------------------------------------------------------
# Averages of NER checkpoints (training.average): the threshold is chosen again
# --------------------------------------------------------------------------------------------


def read_dev(files: Sequence[str], format: str = "auto") -> list[NerRecord]:
    """Labelled NER records of ``files``; a ValueError names the first unreadable record."""
    report = ReadReport()
    records = list(read_ner(files, report, format=format))
    report.check("raise")
    return records


register_rechoose("ner", Rechoose(keys=("threshold",), summary=("threshold", "decode"), read_dev=read_dev,
                                  calibrate=lambda path, dev, grid: calibrate_checkpoint(path, dev, grid)[1]))
