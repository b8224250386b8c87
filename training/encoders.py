"""What the task trainers (NER, similarity) share: the encoder to start from, its tokenizer (MLM
pre-training picks its tokenizer the same way), the optimizer with a separate learning rate for the
task head, an EMA of the weights, fitting a task model, and batched inference in the service's order.

Read top to bottom: ``[vocab]`` and ``[model]`` config -> tokenizer -> encoder -> optimizer -> EMA ->
the module ``fit`` trains (model + optional EMA) -> :func:`fit_task` -> length-sorted batches for
evaluation.

Where the encoder comes from (``[model]``):

* ``init = "runs/mlm_small/model"``: our MLM output (a ``RoFormerForMaskedLM`` folder, ``roformer.``
  keys; the MLM head is ignored), or any Hugging Face RoFormer / RoFormer-Sim folder;
* ``init = "..."`` and ``random_init = true``: the same config and vocabulary, fresh random weights
  (the from-scratch baseline, all else equal);
* ``init = ""``: ``[model.encoder]`` from scratch, with ``vocab.path`` or a vocabulary built from the
  training texts.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.batches import plan_batches
from models.roformer import RoFormerConfig, RoFormerEncoder
from models.tasks import tokenizer_file
from models.text import Tokenizer
from training.config import TrainingConfig
from training.batches import EpochBatches
from training.loop import FitResult, Run, fit, param_groups
from training.vocab import count_pieces, select_vocab, write_vocab

log = logging.getLogger(__name__)

__all__ = [
    "Ema",
    "ModelInit",
    "Trainee",
    "VocabConfig",
    "build_encoder",
    "build_task_optimizer",
    "encoder_overrides",
    "fit_task",
    "length_batches",
    "tokenizer_for",
]


@dataclass(frozen=True)
class VocabConfig:
    """``[vocab]``: ``path`` of an existing vocab.txt (or tokenizer.json), else the init checkpoint's, else
    one is built from the training texts with these settings and saved with the model."""

    path: str = ""
    min_count: int = 5
    max_size: int = 8000
    lowercase: bool = True


@dataclass(frozen=True)
class TaskOptions:
    """What the task trainers' own sections (``[ner]``, ``[sim]``) share: the head's learning rate, an EMA of
    the weights, and evaluation. Each trainer subclasses it with its own options."""

    head_lr: float = 0.0  # learning rate of the task head (0 = training.lr); often 5-10x the encoder's
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights
    eval_every_epoch: bool = True  # evaluate at the end of every epoch (else every training.eval_every)
    eval_batch_tokens: int = 8192  # padded tokens per evaluation batch

    def __post_init__(self):
        if self.head_lr < 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"{self.section}.head_lr must be >= 0 and {self.section}.ema_decay in [0, 1)")

    @property
    def section(self) -> str:
        """The config section it is read from (for messages)."""
        return type(self).__name__.removesuffix("Options").lower()


@dataclass(frozen=True)
class ModelInit:
    """``[model]``: the encoder to start from (see the module docstring).

    ``encoder.vocab_size = 0`` means the vocabulary's size. With ``init``, encoder fields set to
    other than their defaults (e.g. dropout) replace the checkpoint's.
    """

    init: str = ""
    random_init: bool = False
    encoder: RoFormerConfig = field(default_factory=lambda: RoFormerConfig(vocab_size=0))

    def __post_init__(self):
        if self.random_init and not self.init:
            raise ValueError("model.random_init needs model.init (whose config and vocabulary to take); "
                             "with init = \"\" the encoder is random anyway")


# --------------------------------------------------------------------------------------------
# Tokenizer and encoder
# --------------------------------------------------------------------------------------------


def tokenizer_for(init: str, vocab: VocabConfig, out: Path, texts: Callable[[], Iterable[str]], *,
                  resuming: bool) -> tuple[Tokenizer, Path]:
    """The run's tokenizer, copied into ``out``: the run's own when resuming, else ``vocab.path``, else
    that of the ``init`` checkpoint, else one built from ``texts()`` (the training texts)."""
    own = [out / name for name in ("tokenizer.json", "vocab.txt") if (out / name).is_file()]
    if resuming and own:
        src = own[0]
    elif vocab.path:
        src = Path(vocab.path)
    elif init:
        src = tokenizer_file(init)
    else:
        counts = count_pieces(texts(), lowercase=vocab.lowercase)
        src = write_vocab(select_vocab(counts, min_count=vocab.min_count, max_size=vocab.max_size),
                          out / "vocab.txt")
        log.info("built %s: %d tokens from %d distinct pieces of the training texts", src,
                 len(src.read_text(encoding="utf-8").splitlines()), len(counts))
    if src.is_dir():
        src = tokenizer_file(src)
    tokenizer = Tokenizer.load(src, lowercase=vocab.lowercase)
    # under the name a checkpoint's tokenizer must have, whatever the source file is called
    dst = out / ("tokenizer.json" if src.suffix.lower() == ".json" else "vocab.txt")
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    return tokenizer, dst


def encoder_overrides(enc: RoFormerConfig) -> dict:
    """The ``[model.encoder]`` fields set to other than their defaults: what replaces an init checkpoint's."""
    default = ModelInit().encoder
    return {f.name: getattr(enc, f.name) for f in dataclasses.fields(enc)
            if f.name != "vocab_size" and getattr(enc, f.name) != getattr(default, f.name)}


def build_encoder(cfg: ModelInit, vocab_size: int) -> RoFormerEncoder:
    """The encoder as configured; its vocabulary must cover the tokenizer's."""
    if cfg.init and not cfg.random_init:
        encoder = RoFormerEncoder.from_pretrained(cfg.init, **encoder_overrides(cfg.encoder))
        log.info("encoder from %s", cfg.init)
    elif cfg.init:
        enc = dataclasses.replace(RoFormerConfig.from_json(Path(cfg.init) / "config.json"),
                                  **encoder_overrides(cfg.encoder))
        encoder = RoFormerEncoder(enc)
        log.info("encoder with the config of %s, random weights (model.random_init)", cfg.init)
    else:
        enc = cfg.encoder
        if enc.vocab_size == 0:
            enc = dataclasses.replace(enc, vocab_size=vocab_size)
        encoder = RoFormerEncoder(enc)
        log.info("encoder from scratch (random weights)")
    if encoder.cfg.vocab_size < vocab_size:
        raise ValueError(f"the encoder has {encoder.cfg.vocab_size} token embeddings but the vocabulary has "
                         f"{vocab_size} tokens")
    return encoder


def check_length(max_length: int, encoder: RoFormerEncoder, what: str = "data.max_length") -> None:
    if max_length > encoder.cfg.max_position_embeddings:
        raise ValueError(f"{what} {max_length} > the encoder's max_position_embeddings "
                         f"{encoder.cfg.max_position_embeddings}")


# --------------------------------------------------------------------------------------------
# Optimizer: the encoder at training.lr, the task head at its own (higher) lr
# --------------------------------------------------------------------------------------------


def build_task_optimizer(model: nn.Module, head: nn.Module | None, cfg: TrainingConfig,
                         head_lr: float = 0.0) -> torch.optim.AdamW:
    """AdamW over all of ``model`` with weight decay on matrices only (as
    :func:`training.loop.build_optimizer`); the parameters of ``head`` (a part of ``model``) at
    ``head_lr`` (0: ``training.lr``), the rest at ``training.lr``. The schedule scales every group alike."""
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    groups = []
    for part, lr in (("body", cfg.lr), ("head", head_lr or cfg.lr)):
        for g in param_groups(model, cfg.weight_decay):
            params = [p for p in g["params"] if (id(p) in head_ids) == (part == "head")]
            if params:
                groups.append({"params": params, "weight_decay": g["weight_decay"], "lr": lr})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


# --------------------------------------------------------------------------------------------
# EMA of the weights, and the module fit() trains
# --------------------------------------------------------------------------------------------


class Ema(nn.Module):
    """Exponential moving average of a model's trainable parameters, held as buffers (so it is part
    of the trainer's checkpoints and resumes exactly). Decay warms up as min(decay, (1 + n) / (10 + n))."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        for k, (_, p) in enumerate(self._params(model)):
            self.register_buffer(f"shadow_{k}", p.detach().clone())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def _params(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        params = dict(model.named_parameters())
        return [(n, params[n]) for n in self.names]

    def shadows(self) -> list[torch.Tensor]:
        return [getattr(self, f"shadow_{k}") for k in range(len(self.names))]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        n = int(self.updates)
        d = min(self.decay, (1 + n) / (10 + n))
        for shadow, (_, p) in zip(self.shadows(), self._params(model)):
            shadow.lerp_(p.detach().to(shadow.dtype), 1 - d)

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The averaged weights in the model inside the block, the trained ones back after it."""
        params = [p for _, p in self._params(model)]
        with torch.no_grad():
            backup = [p.detach().clone() for p in params]
            for p, shadow in zip(params, self.shadows()):
                p.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)


class Trainee(nn.Module):
    """What ``fit`` trains: the task model (``forward(**batch) -> (output, loss)``) and, when
    ``ema_decay > 0``, its EMA, updated after every optimizer step. Evaluation and saving use
    :meth:`final_weights` (the EMA when there is one)."""

    def __init__(self, model: nn.Module, ema_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.ema = Ema(model, ema_decay) if ema_decay > 0 else None

    def forward(self, **batch):
        return self.model(**batch)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        if self.ema is not None:
            optimizer.register_step_post_hook(lambda *_: self.ema.update(self.model))

    @contextmanager
    def final_weights(self) -> Iterator[None]:
        if self.ema is None:
            yield
        else:
            with self.ema.applied(self.model):
                yield


# --------------------------------------------------------------------------------------------
# Fitting a task model
# --------------------------------------------------------------------------------------------


def fit_task(model: nn.Module, batches: EpochBatches, run: Run, cfg: TrainingConfig, *,
             head: nn.Module | None, head_lr: float, ema_decay: float, eval_every_epoch: bool,
             evaluate: Callable[[], dict] | None, metric: str, save_model: Callable[[Path], None],
             objective: nn.Module | None = None) -> FitResult:
    """Train ``model`` with :func:`training.loop.fit` into ``run``: ``head`` (a part of ``model``) at
    ``head_lr``, an EMA when ``ema_decay > 0``, an evaluation at the end of every epoch when
    ``eval_every_epoch``. ``evaluate()`` (``metric``: higher is better) and ``save_model(folder)`` see
    the final weights (the EMA when there is one); without ``evaluate`` the best checkpoint is the one
    with the lowest training loss. ``objective``: the module to train when it is not ``model`` itself
    (a loss around it, ``forward(**batch) -> (output, loss)``)."""
    trainee = Trainee(model if objective is None else objective, ema_decay).to(run.device)
    optimizer = build_task_optimizer(model, head, cfg, head_lr)
    trainee.attach(optimizer)
    per_epoch = batches.steps_per_epoch
    total = cfg.total_steps(per_epoch)
    if eval_every_epoch:
        cfg = dataclasses.replace(cfg, eval_every=per_epoch)
    log.info("%d steps (%d per epoch); model %.2fM parameters", total, per_epoch,
             sum(p.numel() for p in model.parameters()) / 1e6)

    def with_final_weights(fn: Callable) -> Callable:
        def call(*args):
            with trainee.final_weights():
                return fn(*args)
        return call

    return fit(trainee, batches, cfg, out_dir=run.out, total_steps=total, device=run.device,
               save_model=with_final_weights(save_model),
               evaluate=with_final_weights(evaluate) if evaluate is not None else None,
               metric=metric if evaluate is not None else "loss", higher_is_better=evaluate is not None,
               resume_from=run.resume_from, optimizer=optimizer)


# --------------------------------------------------------------------------------------------
# Evaluation batches
# --------------------------------------------------------------------------------------------


def length_batches(lengths: Sequence[int], *, batch_tokens: int) -> list[list[int]]:
    """Indices grouped longest first, each batch costing at most ``batch_tokens`` padded tokens: the
    service's own plan (:func:`models.batches.plan_batches`)."""
    return plan_batches(list(lengths), batch_tokens)
