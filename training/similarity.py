"""Sentence-similarity fine-tuning: encoder + pooling, trained on a mixture of pair sets with CoSENT
(+ optional in-batch contrastive loss on the positive pairs) or supervised SimCSE (NLI triples),
Spearman on dev pair files.

Read top to bottom: config sections -> sentences as the service cuts them -> examples, batches and the
mixture -> the training module (every sentence of a batch through the encoder at once) -> embedding
and evaluation -> ``train_sim``, the function behind ``ropenlp train sim``.

The training data is a list of pair sets (``[[data.train]]``, one set per file), each with its labels
as in its source (0/1 paraphrase, 0-5 STS, 0/1/2 relevance, NLI words through a label map). With
``data.dedupe`` sets are de-duplicated in order (:func:`training.pairs.deduplicate`: a pair already in an
earlier-listed set, or in a dev set, is dropped; counts in metrics.json). Each set trains with one objective (its
``objective``, else ``sim.objective``):

* ``cosent``: CoSENT over the pairs of a batch (only the order of the labels matters), plus, with
  ``sim.contrastive_weight``, the in-batch softmax over the positive pairs (label >= ``positive_ratio``
  x the set's highest label);
* ``simcse``: supervised SimCSE on (sentence 1, a positive, a negative of the same sentence 1) triples
  (:func:`training.pairs.contrastive_triples`: premise, entailment, contradiction) with in-batch
  negatives.

**The mixture** (:class:`MixtureBatches`): every batch comes from one set, so CoSENT only ever compares
labels of one scale and one meaning. Set i is drawn for a step with probability
``p_i ~ weight_i x batches_i ** sim.mixture_alpha`` (``batches_i``: its batches per pass): alpha 1 with
equal weights visits every pair equally often, alpha 0 gives the weights alone, 0.5 flattens big sets.
One epoch = the sum of the sets' batches per pass. The draw of step t is a function of (seed, t) and
each set's batches are an :class:`training.batches.EpochBatches`, so a resumed run sees exactly the
batches of an uninterrupted one.

A file listed for training and for dev is an error (its dev score would be a training score). With
``sim.eval_sample = N`` the evaluations during training score a fixed, seeded sample of at most N pairs
per dev file, and the best checkpoint is scored on the full dev files at the end (``dev_full``).
Whitening is fitted afterwards (``ropenlp train whitening``).

Output folder: as for NER (``best/`` = SimilarityModel.save + metrics.json, ``model/``,
``checkpoints/``, ``log.jsonl``, ``metrics.json``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from models.losses import cosent_loss, in_batch_contrastive_loss, simcse_loss
from models.pooling import PoolingMode
from models.roformer import read_checkpoint
from models.tasks import SimilarityConfig, SimilarityModel, load_similarity, tokenizer_file
from models.text import Tokenizer, pad_batch
from training.batches import EpochBatches
from training.config import OutputConfig, TrainingConfig, load_config, to_dict
from training.data import ReadReport, settle_reports, write_json
from training.encoders import (ModelInit, TaskOptions, VocabConfig, build_encoder, check_length, fit_task,
                               length_batches, tokenizer_for)
from training.loop import (METRICS_FILE, FitResult, best_metrics, finish_run, new_weights_rng, open_run,
                           write_run_config)
from training.metrics import similarity_scores
from training.pairs import (PairRecord, PairSource, contrastive_triples, deduplicate, read_pair_file,
                            set_rng, source_files, swap_negatives)

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
    dedupe: bool = False  # drop a training pair already in an earlier-listed set or in a dev set (counted)


@dataclass(frozen=True)
class SimModelConfig(ModelInit):
    """``[model]``: the encoder (:class:`training.encoders.ModelInit`) and the pooling."""

    pooling: PoolingMode = "cls"  # cls, mean, first-last-avg, linear (RoFormer-Sim's pooler on [CLS])


@dataclass(frozen=True)
class SimOptions(TaskOptions):
    """``[sim]``: losses, the mixture and evaluation (the head is the linear pooler, if any; see
    :class:`TaskOptions`)."""

    objective: Literal["cosent", "simcse"] = "cosent"  # of the train sets that do not name their own
    mixture_alpha: float = 1.0  # set i drawn with p ~ weight_i x batches_i ** alpha (see the module doc)
    cosent_weight: float = 1.0
    cosent_scale: float = 20.0  # lambda
    contrastive_weight: float = 0.0  # > 0: add the in-batch softmax loss over the positive pairs
    contrastive_scale: float = 20.0  # also SimCSE's (1 / temperature: 20 = 0.05)
    positive_ratio: float = 0.8  # positive: label >= ratio x the highest label of its file (1 of 0/1, 4 of 0-5)
    symmetric: bool = True  # contrastive loss both ways (a picks b, b picks a)
    select_on: str = ""  # dev name whose Spearman picks the best checkpoint ("" = mean over dev files)
    eval_sample: int = 0  # > 0: evaluate on a seeded sample of at most this many pairs per dev file during
    # training, and the best checkpoint on the full files at the end
    eval_sample_seed: int = 0
    swap_negatives: float = 0.0  # > 0: this fraction of every CoSENT set's positive pairs also gives a
    # negative, b with two of its nouns swapped (training.pairs.swap_negatives: PAWS-style word order)

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.swap_negatives <= 1:
            raise ValueError(f"sim.swap_negatives must be in [0, 1], got {self.swap_negatives}")
        if self.cosent_weight < 0 or self.contrastive_weight < 0 or self.cosent_weight + self.contrastive_weight == 0:
            raise ValueError("sim.cosent_weight and sim.contrastive_weight must be >= 0, not both 0")
        if self.mixture_alpha < 0 or self.eval_sample < 0:
            raise ValueError("sim.mixture_alpha and sim.eval_sample must be >= 0")


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
    group: int  # the set it came from
    positive: bool

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))


@dataclass(frozen=True)
class TripleExample:
    anchor: np.ndarray  # (n,) ids
    positive: np.ndarray
    negative: np.ndarray | None
    anchor_id: int  # equal for the triples of one anchor text

    def __len__(self) -> int:
        return max(len(self.anchor), len(self.positive), len(self.negative) if self.negative is not None else 0)


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


class TripleCollator:
    """Every sentence of a batch of triples in one padded batch: rows 0..B-1 the anchors, B..2B-1 the
    positives, then the M hard negatives of the triples that have one (``has_negative``)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[TripleExample], generator: torch.Generator | None = None) -> dict:
        rows = ([e.anchor for e in examples] + [e.positive for e in examples]
                + [e.negative for e in examples if e.negative is not None])
        ids, mask = pad_batch(rows, pad_id=self.pad_id)  # (2B + M, T)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "anchor_ids": torch.tensor([e.anchor_id for e in examples], dtype=torch.long),
                "has_negative": torch.tensor([e.negative is not None for e in examples], dtype=torch.bool)}


class MixtureBatches:
    """Endless batches from several sets, each batch from one set (see the module docstring).

    ``sets``: one :class:`EpochBatches` per set; ``probs``: the chance of each set per step. The set of
    step t is drawn from ``(seed, t)`` alone; ``state_dict`` holds t and every set's position.
    """

    def __init__(self, sets: dict[str, EpochBatches], probs: Sequence[float], *, seed: int = 0):
        if not sets or len(sets) != len(probs):
            raise ValueError(f"{len(sets)} sets but {len(probs)} probabilities")
        p = np.asarray(probs, dtype=np.float64)
        if (p < 0).any() or p.sum() <= 0:
            raise ValueError(f"mixture probabilities must be >= 0 and not all 0, got {list(probs)}")
        self.sets, self.names, self.probs, self.seed = sets, list(sets), p / p.sum(), seed
        self._step = 0

    def choice(self, step: int) -> int:
        """The set (index) that batch number ``step`` (0-based) comes from."""
        if len(self.names) == 1:
            return 0
        return int(np.random.default_rng([self.seed, 0x5E75, step]).choice(len(self.names), p=self.probs))

    @property
    def steps_per_epoch(self) -> int:
        return sum(b.steps_per_epoch for b, p in zip(self.sets.values(), self.probs) if p > 0)

    @property
    def epoch(self) -> float:
        return self._step / max(self.steps_per_epoch, 1)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        name = self.names[self.choice(self._step)]
        self._step += 1
        return next(self.sets[name])

    def state_dict(self) -> dict:
        return {"step": self._step, "sets": {n: b.state_dict() for n, b in self.sets.items()}}

    def load_state_dict(self, state: dict) -> None:
        if "sets" not in state and len(self.sets) == 1:  # a checkpoint of the single-set EpochBatches
            only = next(iter(self.sets.values()))
            only.load_state_dict(state)
            self._step = state["epoch"] * only.steps_per_epoch + state["index"]
            return
        missing = sorted(set(self.sets) - set(state["sets"]))
        if missing:
            raise ValueError(f"the checkpoint's data position has no set {missing[0]!r} (sets: "
                             f"{', '.join(state['sets'])}): resume with the same training sets")
        self._step = state["step"]
        for n, b in self.sets.items():
            b.load_state_dict(state["sets"][n])


class PairLoss(nn.Module):
    """``forward(input_ids, attention_mask, **batch) -> (cosines (B,), loss)`` for a batch of either kind:
    pairs (``labels``, ``groups``, ``positive``: CoSENT + optional in-batch contrastive) or triples
    (``anchor_ids``, ``has_negative``: SimCSE)."""

    def __init__(self, model: SimilarityModel, opts: SimOptions):
        super().__init__()
        self.model, self.opts = model, opts

    def forward(self, input_ids, attention_mask, labels=None, groups=None, positive=None, anchor_ids=None,
                has_negative=None, token_type_ids=None):
        vec, _ = self.model(input_ids, attention_mask)  # (2B [+ M], D) unit rows
        if anchor_ids is not None:
            B = anchor_ids.shape[0]
            a, p, n = vec[:B], vec[B:2 * B], vec[2 * B:]  # (B, D), (B, D), (M, D)
            same = anchor_ids[:, None] == anchor_ids[None, :]  # (B, B)
            loss = simcse_loss(anchors=a, positives=p, negatives=n, same_anchor=same, scale=self.opts.contrastive_scale)
            return (a.float() * p.float()).sum(-1), loss
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


def sample_pairs(recs: Sequence[PairRecord], n: int, *, seed: int, name: str) -> list[PairRecord]:
    """At most ``n`` pairs of ``recs`` (all when n <= 0 or there are fewer), in file order; the sample
    depends on (seed, name) only."""
    if n <= 0 or len(recs) <= n:
        return list(recs)
    rng = set_rng(seed, name)
    return [recs[i] for i in np.sort(rng.choice(len(recs), size=n, replace=False))]


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


def build_sets(train: dict[str, list[PairRecord]], objectives: dict[str, str], tokenizer: Tokenizer, *,
               max_length: int, positive_ratio: float) -> tuple[dict[str, list], dict[str, dict], int]:
    """Examples per set (:class:`PairExample` for CoSENT, :class:`TripleExample` for SimCSE), their counts,
    and how many sentences were cut to ``max_length``."""
    out, stats, cut = {}, {}, 0
    for group, (name, recs) in enumerate(train.items()):
        top = max((p.label for p in recs), default=1.0) or 1.0
        st = {"objective": objectives[name], "pairs": len(recs), "max_label": top}
        if objectives[name] == "simcse":
            triples, counts = contrastive_triples(recs, positive_ratio=positive_ratio)
            texts = list(dict.fromkeys(s for t in triples for s in (t.anchor, t.positive, t.negative) if s is not None))
            ids, n_cut = sentence_ids(tokenizer, texts, max_length)
            index = {t: k for k, t in enumerate(texts)}
            anchors: dict[str, int] = {}
            out[name] = [TripleExample(ids[index[t.anchor]], ids[index[t.positive]],
                                       ids[index[t.negative]] if t.negative is not None else None,
                                       anchors.setdefault("".join(t.anchor.split()), len(anchors)))
                         for t in triples]
            st |= counts
        else:
            a, cut_a = sentence_ids(tokenizer, [p.a for p in recs], max_length)
            b, cut_b = sentence_ids(tokenizer, [p.b for p in recs], max_length)
            positive = [p.label >= positive_ratio * top for p in recs]
            out[name] = [PairExample(x, y, p.label, group, pos) for x, y, p, pos in zip(a, b, recs, positive)]
            n_cut = cut_a + cut_b
            st["positives"] = sum(positive)
        st["cut_sentences"] = n_cut
        stats[name] = st
        cut += n_cut
    return out, stats, cut


def mixture(sets: dict[str, list], weights: dict[str, float], pad_id: int, cfg: TrainingConfig, *,
            alpha: float) -> tuple[MixtureBatches, dict[str, float]]:
    """The batches of every non-empty set and the mixture over them; the probability of each set."""
    batches, probs = {}, []
    for k, (name, examples) in enumerate(sets.items()):
        if not examples:
            log.warning("train set %s has no examples for its objective: left out of the mixture", name)
            continue
        collate = TripleCollator(pad_id) if isinstance(examples[0], TripleExample) else PairCollator(pad_id)
        batches[name] = EpochBatches(examples, collate=collate, batch_size=cfg.batch_size,
                                     batch_tokens=cfg.batch_tokens, seed=cfg.seed + k)
        probs.append(weights[name] * batches[name].steps_per_epoch ** alpha)
    if not batches or sum(probs) <= 0:
        raise ValueError("no training set has both examples and a weight > 0")
    mix = MixtureBatches(batches, probs, seed=cfg.seed)
    return mix, {n: float(p) for n, p in zip(batches, mix.probs)}


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
    dev_full = read_sources(cfg.data.dev, cfg.data.root, dev_report)
    settle_reports(out / "data_report.json", cfg.data.on_error, train=train_report, dev=dev_report)
    if not any(train.values()):
        raise ValueError("no training pairs read")
    if cfg.sim.select_on and cfg.sim.select_on not in dev_full:
        raise ValueError(f"sim.select_on = {cfg.sim.select_on!r} is not a dev name ({', '.join(dev_full) or 'no dev'})")
    source_of = {n: s for s in cfg.data.train for n, _ in source_files(s, root=cfg.data.root)}
    dedup = {}
    if cfg.data.dedupe:
        train, counts = deduplicate(train, dev=[p for recs in dev_full.values() for p in recs])
        dedup = {n: c.to_dict() for n, c in counts.items()}
        for n, c in counts.items():
            if c.dropped or c.dropped_dev:
                log.info("%s: %d pairs, %d dropped as duplicates of an earlier set (%s), %d as dev pairs", n, c.read,
                         c.dropped, ", ".join(f"{k} {v}" for k, v in c.dropped_by.items() if k != "dev") or "-",
                         c.dropped_dev)
    dev = {n: sample_pairs(recs, cfg.sim.eval_sample, seed=cfg.sim.eval_sample_seed, name=n)
           for n, recs in dev_full.items()}

    tokenizer, tok_path = tokenizer_for(cfg.model.init, cfg.vocab, out,
                                        lambda: (s for recs in train.values() for p in recs for s in (p.a, p.b)),
                                        resuming=run.resuming)
    with new_weights_rng(cfg.training):
        encoder = build_encoder(cfg.model, tokenizer.vocab_size)
        model = SimilarityModel(encoder, SimilarityConfig(pooling=cfg.model.pooling, max_length=cfg.data.max_length))
    check_length(cfg.data.max_length, encoder)
    if cfg.model.pooling == "linear" and cfg.model.init and not cfg.model.random_init:
        _, state = read_checkpoint(cfg.model.init)
        if "pooler.dense.weight" in state:
            model.pooling.load_hf_state_dict(state, source=cfg.model.init)
        else:
            log.info("%s has no pooler.dense weights: the linear pooler starts random", cfg.model.init)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=encoder.cfg))
    write_run_config(out, cfg, resuming=run.resuming)

    objectives = {n: source_of[n].objective or cfg.sim.objective for n in train}
    swapped = {}
    if cfg.sim.swap_negatives:
        for n in [n for n in train if objectives[n] == "cosent"]:
            extra = swap_negatives(train[n], cfg.sim.swap_negatives, seed=cfg.training.seed, name=n)
            train[n], swapped[n] = train[n] + extra, len(extra)
        log.info("word-order negatives (sim.swap_negatives = %g): %s", cfg.sim.swap_negatives, swapped)
    sets, data_stats, cut = build_sets(train, objectives, tokenizer, max_length=cfg.data.max_length,
                                       positive_ratio=cfg.sim.positive_ratio)
    if cut:
        log.warning("%d training sentences longer than data.max_length = %d tokens were cut", cut, cfg.data.max_length)
    batches, probs = mixture(sets, {n: source_of[n].weight for n in sets}, tokenizer.pad_id, cfg.training,
                             alpha=cfg.sim.mixture_alpha)
    for n, st in data_stats.items():
        st["probability"] = probs.get(n, 0.0)
        if n in dedup:
            st["dedupe"] = dedup[n]
        if n in swapped:
            st["swap_negatives"] = swapped[n]
        log.info("train %-32s %-6s %7d pairs -> %7d examples  p = %.3f", n, st["objective"], st["pairs"],
                 len(sets[n]), st["probability"])
    log.info("%d training examples from %d set(s), %d steps per epoch; dev %s%s; pooling %s",
             sum(len(v) for v in sets.values()), len(sets), batches.steps_per_epoch,
             {k: len(v) for k, v in dev.items()}, " (samples; full sets at the end)" if cfg.sim.eval_sample else "",
             cfg.model.pooling)
    last: dict = {}

    def evaluate() -> dict:
        scores = evaluate_pairs(model, tokenizer, dev, batch_tokens=cfg.sim.eval_batch_tokens, device=run.device)
        last.clear()
        last.update(scores)
        return _sim_summary(scores, cfg.sim.select_on)

    def save_model(folder: Path) -> None:
        model.save(folder, tokenizer_from=tok_path)
        metrics = {"dev": last} | ({"dev_spearman": _sim_summary(last, cfg.sim.select_on)["spearman"]} if last else {})
        if last and cfg.sim.eval_sample:
            metrics["dev_sample"] = cfg.sim.eval_sample
        write_json(folder / METRICS_FILE, metrics)

    t0 = time.perf_counter()
    result = fit_task(model, batches, run, cfg.training, objective=PairLoss(model, cfg.sim),
                      head=model.pooling if model.pooling.dense is not None else None, head_lr=cfg.sim.head_lr,
                      ema_decay=cfg.sim.ema_decay, eval_every_epoch=cfg.sim.eval_every_epoch,
                      evaluate=evaluate if any(dev.values()) else None, metric="spearman", save_model=save_model)
    full = None
    if cfg.sim.eval_sample and any(dev_full.values()) and (out / "best").is_dir():
        full = evaluate_full(out / "best", dev_full, select_on=cfg.sim.select_on, device=run.device,
                             batch_tokens=cfg.sim.eval_batch_tokens)
    finish_run(run, result, {
        "best_dev": best_metrics(out), **({"best_dev_full": full} if full is not None else {}),
        "data": {"train": data_stats, "dev": {k: len(v) for k, v in dev_full.items()},
                 "dev_during_training": {k: len(v) for k, v in dev.items()},
                 "read": {"train": train_report.summary(), "dev": dev_report.summary()},
                 "steps_per_epoch": batches.steps_per_epoch},
        "seconds": round(time.perf_counter() - t0, 1), "config": to_dict(cfg)})
    return result


def evaluate_full(folder: Path, dev: dict[str, list[PairRecord]], *, select_on: str = "",
                  device: torch.device | str = "cpu", batch_tokens: int = 8192) -> dict:
    """Score a saved checkpoint on the full dev files; added to its metrics.json as ``dev_full``."""
    model = load_similarity(folder).to(device).eval()
    scores = evaluate_pairs(model, Tokenizer.load(tokenizer_file(folder)), dev, batch_tokens=batch_tokens,
                            device=device)
    summary = _sim_summary(scores, select_on)
    path = folder / METRICS_FILE
    metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json(path, metrics | {"dev_full": scores, "dev_full_spearman": summary["spearman"]})
    log.info("best checkpoint on the full dev files: %s", "  ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    return summary
