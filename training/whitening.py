"""Fit BERT-whitening for a similarity checkpoint: ``ropenlp train whitening``.

Pooled vectors (before any whitening) of every sentence of the given files are streamed through a
:class:`models.whitening.CovarianceAccumulator` in chunks, so memory stays O(D^2) whatever the
corpus. Then mu and W are fitted, and every candidate k (plus no whitening at all) is scored by
Spearman on the dev pair files; the chosen k (best mean dev Spearman, or ``choose``) is folded into
the checkpoint as ``whitening.safetensors``, and the scores go to the checkpoint's metrics.json
(key ``whitening``).

Fitting on the dev sentences themselves (as BERT-whitening does for the datasets without a train
split) makes the dev scores transductive; the metrics say so (``fit_on_eval_sentences``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from models.tasks import load_similarity, tokenizer_file
from models.text import Tokenizer
from models.whitening import CovarianceAccumulator, Whitening, apply_whitening, fit_whitening, jl_dimension
from training.data import ReadReport, TextSource, read_source, write_json
from training.metrics import similarity_scores
from training.pairs import PairSource, read_pair_file
from training.similarity import embed, sentence_ids

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
DEFAULT_KS = (32, 64, 128, 256, 384, 512, 768)


def sentence_source(path: str, columns: Sequence[int] = (0, 1)) -> TextSource:
    """Texts of a file by its suffix: .tsv -> the given columns, .json/.jsonl -> field "text", else lines."""
    suffix = Path(path).suffix.lower()
    if suffix == ".tsv":
        return TextSource(paths=(path,), format="tsv", columns=tuple(columns))
    if suffix in (".json", ".jsonl"):
        return TextSource(paths=(path,), format="jsonl", field="text")
    return TextSource(paths=(path,), format="lines")


def _chunks(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk = []
    for t in texts:
        chunk.append(t)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def accumulate(model, tokenizer: Tokenizer, texts: Iterator[str], *, chunk: int = 4096, batch_tokens: int = 8192,
               device: torch.device | str = "cpu") -> tuple[CovarianceAccumulator, int]:
    """Pooled vectors of all texts folded into an accumulator, ``chunk`` texts at a time; and how many
    texts were longer than the model's max_length (cut, as the service cuts them)."""
    acc, cut = CovarianceAccumulator(), 0
    for part in _chunks(texts, chunk):
        acc.update(embed(model, tokenizer, part, pooled=True, batch_tokens=batch_tokens, device=device))
        cut += sentence_ids(tokenizer, part, model.cfg.max_length)[1]
    return acc, cut


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def score_ks(pooled: dict[str, tuple[np.ndarray, np.ndarray, list[float]]], mu: np.ndarray, W: np.ndarray,
             ks: Sequence[int]) -> dict[str, dict[str, dict]]:
    """Scores per setting ("none", "k=64", ...) per dev file; ``pooled[name]`` = (a (N, D), b (N, D), labels)."""
    out: dict[str, dict[str, dict]] = {}
    for setting in ["none", *ks]:
        row = {}
        for name, (a, b, labels) in pooled.items():
            if setting == "none":
                ua, ub = _unit(a), _unit(b)
            else:
                ua, ub = _unit(apply_whitening(a, mu, W, setting)), _unit(apply_whitening(b, mu, W, setting))
            row[name] = similarity_scores((ua * ub).sum(axis=1), labels)
        out["none" if setting == "none" else f"k={setting}"] = row
    return out


def fit_whitening_run(model_dir: str | Path, sentences: Sequence[str], *, eval_files: Sequence[str] = (),
                      ks: Sequence[int] | None = None, choose: int | None = None, out: str | Path | None = None,
                      columns: Sequence[int] = (0, 1), device: str = "cpu", batch_tokens: int = 8192,
                      metrics_path: str | Path | None = None, on_error: str = "raise") -> dict:
    """Fit, score, choose k, save (into ``out``, default the model folder itself). Returns the metrics."""
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else model_dir
    if not sentences:
        raise ValueError("give at least one --sentences file")
    if choose is None and not eval_files:
        raise ValueError("give --eval pair files to choose k by dev Spearman, or --choose K")
    model = load_similarity(model_dir).to(device).eval()
    tokenizer = Tokenizer.load(tokenizer_file(model_dir))
    D = model.encoder.cfg.hidden_size

    report = ReadReport()

    def texts() -> Iterator[str]:
        for path in sentences:
            for rec in read_source(sentence_source(path, columns), report):
                yield rec.text

    acc, cut = accumulate(model, tokenizer, texts(), batch_tokens=batch_tokens, device=device)
    report.check(on_error)
    if acc.count < 2:
        raise ValueError(f"whitening needs at least 2 sentences, read {acc.count}")
    mu, W = fit_whitening(acc)
    jl = jl_dimension(acc.count, max_dim=D)
    wanted = sorted({*DEFAULT_KS, D, jl} if not ks else {*ks, jl})  # the JL estimate is always scored
    if choose is not None:
        wanted = sorted({*wanted, choose})
    skipped = [k for k in wanted if not 1 <= k <= D]
    user_ks = bool(ks)
    ks = [k for k in wanted if 1 <= k <= D]
    if skipped and user_ks:
        log.warning("k %s outside [1, %d] (the pooled dimension): skipped", skipped, D)
    if choose is not None and not 1 <= choose <= D:
        raise ValueError(f"--choose {choose} is outside [1, {D}]")
    log.info("fitted on %d sentences (%s; %d cut to %d tokens); JL estimate k = %d", acc.count, report.summary(),
             cut, model.cfg.max_length, jl)

    eval_report, pooled = ReadReport(), {}
    for path in eval_files:
        recs = list(read_pair_file(path, eval_report, PairSource(paths=(path,))))
        unique = list(dict.fromkeys(s for p in recs for s in (p.a, p.b)))
        index = {s: k for k, s in enumerate(unique)}
        vec = embed(model, tokenizer, unique, pooled=True, batch_tokens=batch_tokens, device=device).astype(np.float64)
        pooled[str(path)] = (vec[[index[p.a] for p in recs]], vec[[index[p.b] for p in recs]],
                             [p.label for p in recs])
    eval_report.check(on_error)
    scores = score_ks(pooled, mu, W, ks) if pooled else {}
    mean = {s: float(np.mean([v["spearman"] for v in row.values()])) for s, row in scores.items()}
    if choose is None:
        k = max(ks, key=lambda k: (mean[f"k={k}"], -k))
    else:
        k = choose
    if scores and choose is None and mean["none"] > mean[f"k={k}"]:
        log.warning("no whitening scores better on dev (%.2f) than the best k = %d (%.2f); k = %d is stored "
                    "anyway (use a checkpoint without whitening, or refit on other sentences)", mean["none"], k,
                    mean[f"k={k}"], k)
    for setting, row in scores.items():
        log.info("%-8s mean Spearman %6.2f  %s", setting, mean[setting],
                 "  ".join(f"{Path(n).parent.name}/{Path(n).stem} {v['spearman']:.2f}" for n, v in row.items()))

    model.whitening = Whitening(mu, W, k)
    model.save(out, tokenizer_from=tokenizer_file(model_dir))
    fit_on_eval = sorted({str(Path(p).resolve()) for p in sentences} & {str(Path(p).resolve()) for p in eval_files})
    result = {"k": k, "chosen_by": "--choose" if choose is not None else "best mean dev spearman",
              "dim": D, "sentences": acc.count, "cut_sentences": cut, "jl_dimension": jl, "ks": ks,
              "sentence_files": [str(p) for p in sentences], "eval_files": [str(p) for p in eval_files],
              "fit_on_eval_sentences": fit_on_eval, "mean_spearman": mean, "scores": scores,
              "chosen_mean_spearman": mean.get(f"k={k}"), "unwhitened_mean_spearman": mean.get("none")}
    metrics_file = out / METRICS_FILE
    base = metrics_file if metrics_file.is_file() else model_dir / METRICS_FILE  # keep the training metrics
    existing = json.loads(base.read_text(encoding="utf-8")) if base.is_file() else {}
    existing["whitening"] = result
    write_json(metrics_file, existing)
    if metrics_path is not None:
        write_json(metrics_path, result)
    log.info("whitening k = %d saved in %s", k, out)
    return result
