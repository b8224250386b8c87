"""Sentence-similarity fine-tuning: encoder + pooling, CoSENT on labelled pairs (+ optional in-batch
contrastive loss on the positive pairs), Spearman on dev pair files.

Read top to bottom: config sections -> sentences as the service cuts them -> batches of pairs ->
the training module (both sentences of a batch through the encoder at once) -> embedding and
evaluation -> ``train_sim``, the function behind ``ropenlp train sim``.

Files labelled on different scales can be mixed (0/1 paraphrase, 0-5 STS): CoSENT only compares
pairs of the same file (``groups``), and "positive" for the contrastive loss is relative to the
file's own highest label. A file listed for training and for dev is an error (its dev score would
be a training score). Whitening is fitted afterwards (``ropenlp train whitening``).

Output folder: as for NER (``best/`` = SimilarityModel.save + metrics.json, ``model/``,
``checkpoints/``, ``log.jsonl``, ``metrics.json``).
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
from torch import nn

from models.losses import cosent_loss, in_batch_contrastive_loss
from models.pooling import PoolingMode
from models.roformer import read_checkpoint
from models.tasks import SimilarityConfig, SimilarityModel
from models.text import Tokenizer, pad_batch
from training.config import OutputConfig, TrainingConfig, load_config, to_dict
from training.data import ReadReport, settle_reports, write_json
from training.batches import EpochBatches
from training.encoders import (ModelInit, TaskOptions, VocabConfig, build_encoder, check_length, fit_task,
                               length_batches, tokenizer_for)
from training.loop import METRICS_FILE, FitResult, best_metrics, finish_run, open_run, write_run_config
from training.metrics import similarity_scores
from training.pairs import PairRecord, PairSource, read_pair_file, source_files

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimDataConfig:
    """``[data]``: ``[[data.train]]`` and ``[[data.dev]]`` pair sources (:class:`training.pairs.PairSource`)."""

    root: str = "."
    train: tuple[PairSource, ...] = ()
    dev: tuple[PairSource, ...] = ()
    max_length: int = 64  # tokens per sentence, [CLS]/[SEP] included; longer ones are cut (and counted)
    on_error: Literal["raise", "skip"] = "raise"


@dataclass(frozen=True)
class SimModelConfig(ModelInit):
    """``[model]``: the encoder (:class:`training.encoders.ModelInit`) and the pooling."""

    pooling: PoolingMode = "cls"  # cls, mean, first-last-avg, linear (RoFormer-Sim's pooler on [CLS])


@dataclass(frozen=True)
class SimOptions(TaskOptions):
    """``[sim]``: losses and evaluation (the head is the linear pooler, if any; see :class:`TaskOptions`)."""

    cosent_weight: float = 1.0
    cosent_scale: float = 20.0  # lambda
    contrastive_weight: float = 0.0  # > 0: add the in-batch softmax loss over the positive pairs
    contrastive_scale: float = 20.0
    positive_ratio: float = 0.8  # positive: label >= ratio x the highest label of its file (1 of 0/1, 4 of 0-5)
    symmetric: bool = True  # contrastive loss both ways (a picks b, b picks a)
    select_on: str = ""  # dev name whose Spearman picks the best checkpoint ("" = mean over dev files)

    def __post_init__(self):
        super().__post_init__()
        if self.cosent_weight < 0 or self.contrastive_weight < 0 or self.cosent_weight + self.contrastive_weight == 0:
            raise ValueError("sim.cosent_weight and sim.contrastive_weight must be >= 0, not both 0")


@dataclass(frozen=True)
class SimRunConfig:
    data: SimDataConfig = field(default_factory=SimDataConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: SimModelConfig = field(default_factory=SimModelConfig)
    sim: SimOptions = field(default_factory=SimOptions)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=lambda: OutputConfig(dir="runs/sim"))


def load_sim_config(path: str | Path | None, overrides=()) -> SimRunConfig:
    return load_config(SimRunConfig, path, overrides)


# --------------------------------------------------------------------------------------------
# Sentences, as the service cuts them
# --------------------------------------------------------------------------------------------


def sentence_ids(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[np.ndarray], int]:
    """``[CLS] ... [SEP]`` ids per text, cut to ``max_length`` tokens with [SEP] kept last (as
    ``service.core`` does); and how many were cut."""
    sep = np.array([tokenizer.sep_id], dtype=np.int64)
    out, cut = [], 0
    for enc in tokenizer.encode_batch(list(texts)):
        if len(enc) > max_length:
            out.append(np.concatenate([enc.ids[: max_length - 1], sep]))
            cut += 1
        else:
            out.append(enc.ids)
    return out, cut


@torch.no_grad()
def embed(model: SimilarityModel, tokenizer: Tokenizer, texts: Sequence[str], *, max_length: int | None = None,
          batch_tokens: int = 8192, device: torch.device | str = "cpu", pooled: bool = False) -> np.ndarray:
    """(N, D) float32: the model's vectors (whitened if it has whitening, L2-normalised), or with
    ``pooled`` the raw pooled vectors whitening is fitted on."""
    ids, _ = sentence_ids(tokenizer, texts, max_length or model.cfg.max_length)
    out = np.zeros((len(texts), model.encoder.cfg.hidden_size if pooled else model.dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    for batch in length_batches([len(x) for x in ids], batch_tokens=batch_tokens):
        b_ids, b_mask = pad_batch([ids[k] for k in batch], pad_id=tokenizer.pad_id)
        b_ids, b_mask = torch.from_numpy(b_ids).to(device), torch.from_numpy(b_mask).to(device)
        vec = model.pooled(b_ids, b_mask) if pooled else model(b_ids, b_mask)[0]  # (B, D)
        out[batch] = vec.float().cpu().numpy()
    model.train(was_training)
    return out


def pair_cosines(model: SimilarityModel, tokenizer: Tokenizer, pairs: Sequence[PairRecord], **kw) -> np.ndarray:
    """Cosine of each pair (each distinct sentence embedded once)."""
    unique = list(dict.fromkeys(s for p in pairs for s in (p.a, p.b)))
    index = {s: k for k, s in enumerate(unique)}
    vec = embed(model, tokenizer, unique, **kw)  # (U, D), unit rows
    a = vec[[index[p.a] for p in pairs]]
    b = vec[[index[p.b] for p in pairs]]
    return (a * b).sum(axis=1)


# --------------------------------------------------------------------------------------------
# Batches and the training module
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairExample:
    a: np.ndarray  # (n,) ids
    b: np.ndarray
    label: float
    group: int  # the file it came from
    positive: bool

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))


class PairCollator:
    """Both sentences of every pair in one padded batch: rows 0..B-1 the first ones, B..2B-1 the second."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[PairExample], generator: torch.Generator | None = None) -> dict:
        ids, mask = pad_batch([e.a for e in examples] + [e.b for e in examples], pad_id=self.pad_id)  # (2B, T)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "labels": torch.tensor([e.label for e in examples], dtype=torch.float32),
                "groups": torch.tensor([e.group for e in examples], dtype=torch.long),
                "positive": torch.tensor([e.positive for e in examples], dtype=torch.bool)}


class PairLoss(nn.Module):
    """``forward(input_ids, attention_mask, labels, groups, positive) -> (cosines (B,), loss)``."""

    def __init__(self, model: SimilarityModel, opts: SimOptions):
        super().__init__()
        self.model, self.opts = model, opts

    def forward(self, input_ids, attention_mask, labels, groups, positive, token_type_ids=None):
        vec, _ = self.model(input_ids, attention_mask)  # (2B, D) unit rows
        B = labels.shape[0]
        a, b = vec[:B], vec[B:]  # (B, D) each
        cos = (a.float() * b.float()).sum(-1)  # (B,)
        loss = cos.new_zeros(())
        if self.opts.cosent_weight:
            loss = loss + self.opts.cosent_weight * cosent_loss(cos=cos, labels=labels, groups=groups,
                                                                scale=self.opts.cosent_scale)
        if self.opts.contrastive_weight and int(positive.sum()) >= 2:
            loss = loss + self.opts.contrastive_weight * in_batch_contrastive_loss(
                anchors=a[positive], positives=b[positive], scale=self.opts.contrastive_scale,
                symmetric=self.opts.symmetric)
        return cos, loss


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


def read_sources(sources: Sequence[PairSource], root: str, report: ReadReport) -> dict[str, list[PairRecord]]:
    """Records per file, keyed by the file's name (:func:`training.pairs.source_files`)."""
    out: dict[str, list[PairRecord]] = {}
    for source in sources:
        for name, path in source_files(source, root=root):
            if name in out:
                raise ValueError(f"two pair files are both named {name!r}: give the sources distinct names")
            out[name] = list(read_pair_file(path, report, source))
    return out


def evaluate_pairs(model: SimilarityModel, tokenizer: Tokenizer, dev: dict[str, list[PairRecord]], *,
                   batch_tokens: int = 8192, device: torch.device | str = "cpu") -> dict[str, dict]:
    return {name: similarity_scores(pair_cosines(model, tokenizer, recs, batch_tokens=batch_tokens, device=device),
                                    [p.label for p in recs])
            for name, recs in dev.items()}


def _sim_summary(scores: dict[str, dict], select_on: str) -> dict:
    flat = {f"spearman/{k}": v["spearman"] for k, v in scores.items()}
    mean = sum(v["spearman"] for v in scores.values()) / max(len(scores), 1)
    flat["spearman"] = scores[select_on]["spearman"] if select_on else mean
    flat["spearman_mean"] = mean
    return flat


def train_sim(cfg: SimRunConfig, *, resume: bool = False) -> FitResult:
    if not cfg.data.train:
        raise ValueError("no [[data.train]] pair sources configured")
    train_files = {p.resolve(): n for s in cfg.data.train for n, p in source_files(s, root=cfg.data.root)}
    both = [n for s in cfg.data.dev for n, p in source_files(s, root=cfg.data.root) if p.resolve() in train_files]
    if both:
        raise ValueError(f"{', '.join(both)}: listed for training and for dev; a dev score on training data "
                         "means nothing (dev-only sets such as lcqmc/atec/bq/pawsx can be dev or whitening data)")
    run = open_run(cfg.output.dir, cfg.training, resume=resume)
    out = run.out

    train_report, dev_report = ReadReport(), ReadReport()
    train = read_sources(cfg.data.train, cfg.data.root, train_report)
    dev = read_sources(cfg.data.dev, cfg.data.root, dev_report)
    settle_reports(out / "data_report.json", cfg.data.on_error, train=train_report, dev=dev_report)
    if not any(train.values()):
        raise ValueError("no training pairs read")
    if cfg.sim.select_on and cfg.sim.select_on not in dev:
        raise ValueError(f"sim.select_on = {cfg.sim.select_on!r} is not a dev name ({', '.join(dev) or 'no dev'})")

    tokenizer, tok_path = tokenizer_for(cfg.model.init, cfg.vocab, out,
                                        lambda: (s for recs in train.values() for p in recs for s in (p.a, p.b)),
                                        resuming=run.resuming)
    encoder = build_encoder(cfg.model, tokenizer.vocab_size)
    check_length(cfg.data.max_length, encoder)
    model = SimilarityModel(encoder, SimilarityConfig(pooling=cfg.model.pooling, max_length=cfg.data.max_length))
    if cfg.model.pooling == "linear" and cfg.model.init and not cfg.model.random_init:
        _, state = read_checkpoint(cfg.model.init)
        if "pooler.dense.weight" in state:
            model.pooling.load_hf_state_dict(state, source=cfg.model.init)
        else:
            log.info("%s has no pooler.dense weights: the linear pooler starts random", cfg.model.init)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=encoder.cfg))
    write_run_config(out, cfg, resuming=run.resuming)

    examples, cut, data_stats = [], 0, {}
    for group, (name, recs) in enumerate(train.items()):
        top = max((p.label for p in recs), default=1.0) or 1.0
        a, cut_a = sentence_ids(tokenizer, [p.a for p in recs], cfg.data.max_length)
        b, cut_b = sentence_ids(tokenizer, [p.b for p in recs], cfg.data.max_length)
        positive = [p.label >= cfg.sim.positive_ratio * top for p in recs]
        examples += [PairExample(x, y, p.label, group, pos) for x, y, p, pos in zip(a, b, recs, positive)]
        cut += cut_a + cut_b
        data_stats[name] = {"pairs": len(recs), "max_label": top, "positives": sum(positive),
                            "cut_sentences": cut_a + cut_b}
    if cut:
        log.warning("%d training sentences longer than data.max_length = %d tokens were cut", cut, cfg.data.max_length)
    batches = EpochBatches(examples, collate=PairCollator(tokenizer.pad_id), batch_size=cfg.training.batch_size,
                           batch_tokens=cfg.training.batch_tokens, seed=cfg.training.seed)
    log.info("%d training pairs from %d file(s); dev %s; pooling %s", len(examples), len(train),
             {k: len(v) for k, v in dev.items()}, cfg.model.pooling)
    last: dict = {}

    def evaluate() -> dict:
        scores = evaluate_pairs(model, tokenizer, dev, batch_tokens=cfg.sim.eval_batch_tokens, device=run.device)
        last.clear()
        last.update(scores)
        return _sim_summary(scores, cfg.sim.select_on)

    def save_model(folder: Path) -> None:
        model.save(folder, tokenizer_from=tok_path)
        metrics = {"dev": last} | ({"dev_spearman": _sim_summary(last, cfg.sim.select_on)["spearman"]} if last else {})
        write_json(folder / METRICS_FILE, metrics)

    t0 = time.perf_counter()
    result = fit_task(model, batches, run, cfg.training, objective=PairLoss(model, cfg.sim),
                      head=model.pooling if model.pooling.dense is not None else None, head_lr=cfg.sim.head_lr,
                      ema_decay=cfg.sim.ema_decay, eval_every_epoch=cfg.sim.eval_every_epoch,
                      evaluate=evaluate if any(dev.values()) else None, metric="spearman", save_model=save_model)
    finish_run(run, result, {
        "best_dev": best_metrics(out),
        "data": {"train": data_stats, "dev": {k: len(v) for k, v in dev.items()},
                 "read": {"train": train_report.summary(), "dev": dev_report.summary()},
                 "steps_per_epoch": batches.steps_per_epoch},
        "seconds": round(time.perf_counter() - t0, 1), "config": to_dict(cfg)})
    return result
