"""A small, generic training loop and what consumes it.

Read top to bottom: seeds and RNG state -> optimizer and schedule -> ``train_steps`` (the loop itself: fetch -> forward -> backward -> clip -> step -> schedule, yielding
a :class:`StepInfo` per step) -> its consumers (JSONL log, progress, checkpoints, early stopping) ->
``fit``, which wires them together for any model whose ``forward(**batch)`` returns ``(output, loss)`` ->
a trainer's run around it (:func:`open_run` before, :func:`finish_run` after). The batches it draws
(:mod:`training.batches`) and the checkpoints it writes (:mod:`training.checkpoints`) have their own
modules.

Resuming is exact: a checkpoint holds the model, optimizer, scheduler, every RNG state and the data
position, so ``N`` steps straight and ``k`` steps + resume + ``N - k`` steps give identical weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from training.batches import Batches
from training.checkpoints import CHECKPOINTS_DIR, TRAINER_STATE, Checkpoints, resume_point
from training.config import (RESOLVED_FILE, ConfigError, TrainingConfig, config_diff, from_dict, to_dict,
                             write_resolved)
from training.data import write_json

log = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
# Keys that may change when a run is resumed: they do not change the weights.
RESUMABLE_CHANGES = ("training.device", "training.threads", "training.progress", "training.log_every",
                     "training.eval_every", "training.checkpoint_every", "training.keep_checkpoints",
                     "output.dir")

# --------------------------------------------------------------------------------------------
# Seeds, devices, RNG state
# --------------------------------------------------------------------------------------------


def setup_torch(cfg: TrainingConfig) -> torch.device:
    """Seed every RNG, set the CPU thread count, check the device exists, keep the heap from growing."""
    limit_heap_growth()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"training.device = {cfg.device!r} but CUDA is not available (this torch build: "
                         f"{torch.__version__}); use training.device = \"cpu\"")
    if cfg.precision == "bf16" and device.type == "cpu" and not _cpu_has_bf16():
        log.warning("training.precision = \"bf16\" on a CPU without AVX512-BF16/AMX (torch: %s): bf16 is emulated "
                    "there (measured on 2 AVX2 cores, recipes/sim_v3.toml: ~45 s a step against ~3 s in fp32); "
                    "pass --training.precision fp32", torch.backends.cpu.get_cpu_capability())
    set_seed(cfg.seed)
    return device


def limit_heap_growth() -> bool:
    """glibc only: a fixed mmap threshold (1 MiB) and at most two malloc arenas.

    Measured on MLM pre-training (logits at the masked positions change size every step, batches are
    built on a second thread): with glibc's defaults the process grew ~200 MB a minute, 3 -> 9.4 GB in
    20 minutes, all of it freed-but-fragmented heap (``malloc_trim`` gave 6 GB back at once); with these
    settings it stays at 1.1-1.7 GB. Large tensors are then mapped and unmapped, never left in the heap.
    Returns whether the settings were applied (False off glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    return all(mallopt(option, value) == 1 for option, value in
               ((M_MMAP_THRESHOLD, 1 << 20), (M_TRIM_THRESHOLD, 1 << 20), (M_ARENA_MAX, 2)))


def _cpu_has_bf16() -> bool:
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


@contextlib.contextmanager
def new_weights_rng(cfg: TrainingConfig) -> Iterator[None]:
    """Build a model's new weights inside this block: drawn from ``training.init_seed`` when set (the global
    RNG is left as it was, so the data order and dropout still follow ``training.seed``), else from the
    global RNG that :func:`setup_torch` seeded."""
    if cfg.init_seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.init_seed)
        yield


def rng_states() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# --------------------------------------------------------------------------------------------
# Optimizer and schedule
# --------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear weights, embeddings); none on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (1-based): linear warmup to 1 over
    ``warmup`` steps, then ``constant``, ``linear`` or ``cosine`` decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainingConfig, total_steps: int):
    warmup = cfg.warmup_for(total_steps)

    def factor(done: int) -> float:  # LambdaLR counts finished steps; the next one is done + 1
        return lr_factor(done + 1, total=total_steps, warmup=warmup, schedule=cfg.schedule,
                         min_ratio=cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepInfo:
    step: int
    loss: float
    lr: float  # the lr this step used
    grad_norm: float  # before clipping (nan when clipping is off)
    tokens: int  # real (unpadded) tokens in the batch
    seconds: float  # wall time of the step, fetch included
    epoch: float  # epochs done after this step

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _real_tokens(batch: dict[str, torch.Tensor]) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def token_embeddings(model: nn.Module) -> nn.Parameter:
    """The encoder's token embedding matrix (what FGM perturbs)."""
    found = [p for name, p in model.named_parameters() if name.endswith("tok_emb.weight")]
    if len(found) != 1:
        raise ValueError(f"training.adversarial needs one token embedding matrix (*tok_emb.weight) in the "
                         f"model, found {len(found)}")
    return found[0]


@contextlib.contextmanager
def perturbed(weight: nn.Parameter, epsilon: float) -> Iterator[bool]:
    """FGM (Miyato et al. 2017): ``weight`` moved by ``epsilon`` along its gradient's direction for the
    duration, restored after. Yields False (and moves nothing) when the gradient is zero or not finite."""
    grad = weight.grad
    norm = torch.linalg.vector_norm(grad) if grad is not None else None
    if norm is None or not torch.isfinite(norm) or norm == 0:
        yield False
        return
    saved = weight.detach().clone()  # restored by copy: w + d - d is not w in floating point
    with torch.no_grad():
        weight.add_(grad, alpha=float(epsilon / norm))
    try:
        yield True
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, batches: Batches, *,
                max_steps: int, start_step: int = 0, clip: float = 1.0, device: torch.device | str = "cpu",
                precision: str = "fp32", adversarial: float = 0.0) -> Iterator[StepInfo]:
    """Run optimizer steps ``start_step + 1 .. max_steps``, yielding a :class:`StepInfo` after each.

    ``adversarial`` > 0: each step adds the gradient of the loss at token embeddings moved that far along
    their gradient (FGM); the loss reported is the clean one."""
    device = torch.device(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    embeddings = token_embeddings(model) if adversarial > 0 else None
    for step in range(start_step + 1, max_steps + 1):
        t0 = time.perf_counter()
        batch = next(batches)  # fetch
        tokens = _real_tokens(batch)
        batch = to_device(batch, device)
        model.train()
        with autocast:
            _, loss = model(**batch)  # forward
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # backward
        if embeddings is not None:
            with perturbed(embeddings, adversarial) as moved:
                if moved:
                    with autocast:
                        _, adv_loss = model(**batch)  # the adversarial forward, its gradient added
                    adv_loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.tensor(float("nan"))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()  # step
        scheduler.step()  # schedule
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {step} (lower training.lr?)")
        seconds = time.perf_counter() - t0
        yield StepInfo(step, loss_value, lr, float(grad_norm), tokens, seconds, batches.epoch)


# --------------------------------------------------------------------------------------------
# Consumers: JSONL log, progress, early stopping (checkpoints: training.checkpoints)
# --------------------------------------------------------------------------------------------


class JsonlLog:
    """One JSON object per line: step records and eval records, appended as they come."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (written by a run that was then interrupted)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut short by the interruption
                pass
        self.path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """A tqdm bar with loss, lr and tokens/s when stderr is a terminal (``mode="auto"``); otherwise
    a log line every ``log_every`` steps with the same numbers and the ETA."""

    def __init__(self, *, total: int, start: int, mode: str = "auto", log_every: int = 50):
        self.total, self.start, self.log_every = total, start, max(1, log_every)
        self.window: deque[StepInfo] = deque(maxlen=self.log_every)
        self.t0 = time.perf_counter()
        enabled = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr)

    def smoothed(self) -> tuple[float, float]:
        """Mean loss and tokens/s over the last ``log_every`` steps."""
        loss = sum(i.loss for i in self.window) / len(self.window)
        tps = sum(i.tokens for i in self.window) / max(sum(i.seconds for i in self.window), 1e-9)
        return loss, tps

    def update(self, info: StepInfo) -> None:
        self.window.append(info)
        loss, tps = self.smoothed()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{info.lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
            self.bar.update(1)
        elif info.step % self.log_every == 0 or info.step == self.total:
            elapsed = time.perf_counter() - self.t0
            eta = elapsed / (info.step - self.start) * (self.total - info.step)
            log.info("step %d/%d  loss %.4f  lr %.2e  %s tok/s  epoch %.2f  elapsed %s  eta %s", info.step,
                     self.total, loss, info.lr, f"{tps:,.0f}", info.epoch, _hms(elapsed), _hms(eta))

    def write(self, message: str) -> None:
        """Log a message without breaking the bar."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            log.info("%s", message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EarlyStopping:
    """Counts evaluations without improvement of one metric; ``stop`` after ``patience`` of them."""

    def __init__(self, patience: int = 0, *, higher_is_better: bool = False):
        self.patience, self.higher = patience, higher_is_better
        self.best: float | None = None
        self.bad = 0

    def update(self, value: float) -> bool:
        """Record an evaluation; True when it is the best so far."""
        better = self.best is None or (value > self.best if self.higher else value < self.best)
        if better:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return better

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = state["best"], state["bad"]


# --------------------------------------------------------------------------------------------
# A trainer's run: the output folder, resumed or fresh; its config; fit; the final metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """An output folder being trained into: where, the checkpoint it resumes from, the device."""

    out: Path
    resume_from: Path | None
    device: torch.device

    @property
    def resuming(self) -> bool:
        return self.resume_from is not None


def open_run(out_dir: str | Path, cfg: TrainingConfig, *, resume: bool) -> Run:
    """The checkpoint to resume from (:func:`resume_point`) and a fresh run's ``training.data_from``
    (:func:`check_data_from`), both before any slow preparation; torch set up (:func:`setup_torch`), the folder made."""
    out = Path(out_dir)
    latest = resume_point(out, resume=resume)
    if latest is None and cfg.data_from:
        check_data_from(cfg)
    device = setup_torch(cfg)
    out.mkdir(parents=True, exist_ok=True)
    return Run(out, latest, device)


def write_run_config(out_dir: str | Path, cfg: Any, *, resuming: bool) -> Path:
    """Write ``config.resolved.toml``; when resuming, it must first equal the saved one except for
    :data:`RESUMABLE_CHANGES` (a changed lr or batch size would make the resumed run another run)."""
    out = Path(out_dir)
    if resuming and (out / RESOLVED_FILE).is_file():
        import tomllib

        saved = tomllib.loads((out / RESOLVED_FILE).read_text(encoding="utf-8"))
        try:  # a key added to the config since the run started: today's default
            saved = from_dict(type(cfg), saved)
        except ConfigError:
            pass  # a key since removed (or renamed): compared as it is, so the diff names it
        changed = config_diff(saved, to_dict(cfg), ignore=RESUMABLE_CHANGES)
        if changed:
            raise ConfigError(f"cannot resume {out}: the config differs from the saved {RESOLVED_FILE} in "
                              f"{', '.join(changed)} (only {', '.join(RESUMABLE_CHANGES)} may change)")
    return write_resolved(cfg, out)


def _json_safe(record: dict) -> dict:
    """Floats rounded for the log; NaN/inf (not JSON) as null."""
    def safe(v):
        return (round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v

    return {k: safe(v) for k, v in record.items()}


def check_data_from(cfg: TrainingConfig) -> None:
    """``training.data_from`` names a checkpoint (``OUT/checkpoints/step-N``) whose run drew its batches as this
    one will: they come from (seed, epoch) and a mixture's from (seed, step), so the data continues only under the
    same seed and batch size, checked against that run's ``config.resolved.toml`` (the sets themselves by the
    data state, when :func:`fit` loads it)."""
    path = Path(cfg.data_from)
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(f"training.data_from = {str(path)!r} is not a checkpoint folder (no {TRAINER_STATE}; "
                          f"expected OUT/{CHECKPOINTS_DIR}/step-N)")
    resolved = path.parent.parent / RESOLVED_FILE
    if not resolved.is_file():
        raise ConfigError(f"training.data_from: {resolved} not found: the run's seed and batch size cannot be checked")
    import tomllib

    theirs = tomllib.loads(resolved.read_text(encoding="utf-8")).get("training", {})
    differ = [f"training.{k} ({theirs.get(k)!r} there, {getattr(cfg, k)!r} here)"
              for k in ("seed", "batch_size", "batch_tokens") if theirs.get(k, getattr(cfg, k)) != getattr(cfg, k)]
    if differ:
        raise ConfigError(f"training.data_from = {str(path)!r}: its run drew its batches with another "
                          f"{', '.join(differ)}: the data would not continue, it would start in another order")


@dataclass(frozen=True)
class FitResult:
    step: int
    stopped_early: bool
    best: float | None  # best value of the early-stopping metric
    last_eval: dict
    tokens_per_s: float  # over this process's steps


def fit(model: nn.Module, batches: Batches, cfg: TrainingConfig, *, out_dir: str | Path, total_steps: int,
        save_model: Callable[[Path], None], evaluate: Callable[[], dict] | None = None, metric: str = "loss",
        higher_is_better: bool = False, resume_from: Path | None = None,
        optimizer: torch.optim.Optimizer | None = None, device: torch.device | str = "cpu") -> FitResult:
    """Train ``model`` (already on ``device``) for ``total_steps`` steps, consuming :func:`train_steps`.

    Writes under ``out_dir``: ``log.jsonl`` (every step and eval), ``checkpoints/step-N/`` every
    ``cfg.checkpoint_every`` steps and at the end, ``best/`` whenever ``evaluate()[metric]``
    improves, ``model/`` at the end (both through ``save_model(folder)``), ``metrics.json``.
    """
    out = Path(out_dir)
    optimizer = optimizer or build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    checkpoints = Checkpoints(out / CHECKPOINTS_DIR, cfg.keep_checkpoints)
    stopper = EarlyStopping(cfg.patience, higher_is_better=higher_is_better)
    steplog = JsonlLog(out / LOG_FILE)
    start, last_eval, stopped = 0, {}, False
    if resume_from is not None:
        state = Checkpoints.load(resume_from)  # on the CPU: RNG states must stay there; the
        # model and optimizer copy their tensors onto their parameters' device when loading
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        batches.load_state_dict(state["data"])
        stopper.load_state_dict(state["early_stopping"])
        set_rng_states(state["rng"])
        start, last_eval, stopped = state["step"], state["last_eval"], state["stopped"]
        log.info("resumed from %s (step %d, epoch %.2f)%s", resume_from, start, batches.epoch,
                 ": the run had stopped early, nothing to do" if stopped else "")

    elif cfg.data_from:  # checked by open_run (check_data_from): the data where that run stopped
        try:
            batches.load_state_dict(Checkpoints.load(cfg.data_from)["data"])
        except (KeyError, ValueError) as e:
            raise ConfigError(f"training.data_from = {cfg.data_from!r}: {e}") from None
        log.info("the data continues where %s stopped (epoch %.3f)", cfg.data_from, batches.epoch)

    steplog.truncate_after(start)  # steps logged after the checkpoint (or by a failed fresh start) go

    def trainer_state(step: int) -> dict:
        return {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "data": batches.state_dict(), "rng": rng_states(),
                "early_stopping": stopper.state_dict(), "last_eval": last_eval, "stopped": stopped}

    def run_eval(step: int) -> None:
        nonlocal last_eval
        if evaluate is None:
            return
        t0 = time.perf_counter()
        last_eval = evaluate()
        improved = stopper.update(last_eval[metric])
        steplog.write({"step": step, "eval": last_eval, "seconds": round(time.perf_counter() - t0, 3)})
        shown = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in last_eval.items())
        verdict = "(best)" if improved else f"(no improvement for {stopper.bad})"
        progress.write(f"eval at step {step}: {shown}  {verdict}")
        if improved:
            save_model(out / "best")

    progress = Progress(total=total_steps, start=start, mode=cfg.progress, log_every=cfg.log_every)
    step, tokens, seconds = start, 0, 0.0
    end = start if stopped else total_steps
    try:
        for info in train_steps(model, optimizer, scheduler, batches, max_steps=end, start_step=start,
                                clip=cfg.clip, device=device, precision=cfg.precision,
                                adversarial=cfg.adversarial):
            step = info.step
            tokens, seconds = tokens + info.tokens, seconds + info.seconds
            steplog.write(_json_safe(dataclasses.asdict(info) | {"tokens_per_s": info.tokens_per_s}))
            progress.update(info)
            last = step == total_steps
            if last or (cfg.eval_every and step % cfg.eval_every == 0):
                run_eval(step)
                stopped = stopper.stop and not last
            if last or stopped or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoints.save(step, trainer_state(step), save_model)
            if stopped:
                progress.write(f"early stop at step {step}: {metric} did not improve in {stopper.bad} evals")
                break
    finally:
        progress.close()
    if step == start and evaluate is not None and not last_eval:  # nothing left to train: still report
        run_eval(step)
    save_model(out / "model")
    result = FitResult(step, stopped, stopper.best, last_eval, tokens / seconds if seconds else float("nan"))
    metrics = _json_safe(dataclasses.asdict(result) | {"last_eval": _json_safe(result.last_eval)})
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return result


def best_metrics(out_dir: str | Path) -> dict | None:
    """The metrics.json saved beside the best checkpoint (None when there is no best checkpoint)."""
    path = Path(out_dir) / "best" / METRICS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def finish_run(run: Run, result: FitResult, metrics: dict, *, kept: Literal["best", "model"] = "best") -> None:
    """Add ``metrics`` to the metrics.json :func:`fit` wrote; log where the model (``kept``: ``"best"``
    checkpoint or final ``"model"``) and the log are."""
    path = run.out / METRICS_FILE
    write_json(path, json.loads(path.read_text(encoding="utf-8")) | metrics)
    what = {"best": "best checkpoint", "model": "final model"}[kept]
    log.info("done at step %d: %s in %s, log in %s", result.step, what, run.out / kept, run.out / LOG_FILE)
