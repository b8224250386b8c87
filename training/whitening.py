"""Fit BERT-whitening for a similarity checkpoint, or decide against it: ``ropenlp train whitening``.

Whitening is fitted on one or more *fit sets* of sentences (``--sentences`` files, or named sets
``--fit own=...`` / ``--fit general=...``, each optionally a seeded sample of at most
``max_sentences`` sentences per file). Pooled vectors (before any whitening) are streamed through a
:class:`models.whitening.CovarianceAccumulator` in chunks, so memory stays O(D^2) whatever the corpus.
For every fit set, mu and W are fitted and every candidate k (the full dimension, the JL estimate
8.33 ln N, the values asked for) is scored by Spearman on the dev pair files, as is no whitening at
all. The setting with the best mean dev Spearman (or ``choose``) is stored in the checkpoint: a
``whitening.safetensors`` the exporter folds into the graph, or none (the file is removed: the
checkpoint and its bundle then have no whitening) when no whitening scores best (ties go to none).
The table goes to the checkpoint's metrics.json (key ``whitening``) and, with ``metrics_path``, to its
own JSON.

Rows of the table: ``none``; ``k=K`` for the ``--sentences`` set; ``NAME/k=K`` for a named fit set.

Fitting on the dev sentences themselves (as BERT-whitening does for the datasets without a train
split) makes the dev scores transductive; the metrics say so (``fit_on_eval_sentences``).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
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


def sample_texts(texts: Iterator[str], n: int, *, seed: int) -> list[str]:
    """A uniform sample of at most ``n`` texts (all when n <= 0), in stream order, from (seed) alone."""
    if n <= 0:
        return list(texts)
    rng, keep = random.Random(seed), []  # reservoir sampling (algorithm R) of (position, text)
    for i, t in enumerate(texts):
        if i < n:
            keep.append((i, t))
        else:
            j = rng.randrange(i + 1)
            if j < n:
                keep[j] = (i, t)
    return [t for _, t in sorted(keep)]


def _row(fit: str, k: int) -> str:
    return f"{fit}/k={k}" if fit else f"k={k}"


def _parse_row(row: str) -> tuple[str, int]:
    """(fit set, k) of a row name (``k=K`` or ``NAME/k=K``)."""
    fit, _, k = row.rpartition("k=")
    if (fit and not fit.endswith("/")) or not k.isdigit():
        raise ValueError(f"{row!r} is not a whitening setting (none, K, k=K or NAME/k=K)")
    return fit.removesuffix("/"), int(k)


def _choice(choose: str | int | None, fits: Sequence[str], D: int) -> str | None:
    """The table row ``choose`` names: "none", a k of the first fit set, or a row name."""
    if choose is None:
        return None
    text = str(choose).strip()
    if text == "none":
        return "none"
    row = _row(fits[0], int(text)) if text.isdigit() else text
    if not 1 <= _parse_row(row)[1] <= D:
        raise ValueError(f"--choose {text}: k is outside [1, {D}]")
    return row


def fit_whitening_run(model_dir: str | Path, sentences: Sequence[str] = (), *, eval_files: Sequence[str] = (),
                      fits: Mapping[str, Sequence[str]] | None = None, ks: Sequence[int] | None = None,
                      choose: str | int | None = None, out: str | Path | None = None,
                      columns: Sequence[int] = (0, 1), device: str = "cpu", batch_tokens: int = 8192,
                      metrics_path: str | Path | None = None, on_error: str = "raise", max_sentences: int = 0,
                      seed: int = 0) -> dict:
    """Fit on every fit set, score every (set, k) and no whitening, store the best (or ``choose``: "none",
    a k, or a row name) in ``out`` (default the model folder itself). Returns the metrics.

    ``sentences``: the files of the unnamed fit set (rows ``k=K``); ``fits``: named sets {name: files}
    (rows ``name/k=K``); ``max_sentences`` > 0: at most that many sentences per file or glob (a seeded
    sample)."""
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else model_dir
    sets = ({"": list(sentences)} if sentences else {}) | {k: list(v) for k, v in (fits or {}).items()}
    if not sets or not all(sets.values()):
        raise ValueError("give at least one --sentences file or --fit NAME=FILES")
    if any("/" in name or name == "none" for name in sets):
        raise ValueError(f"fit set names may not contain '/' or be 'none': {', '.join(sets)}")
    if choose is None and not eval_files:
        raise ValueError("give --eval pair files to choose by dev Spearman, or --choose")
    model = load_similarity(model_dir).to(device).eval()
    model.whitening = None  # fitted on the pooled vectors, and "none" means none
    tokenizer = Tokenizer.load(tokenizer_file(model_dir))
    D = model.encoder.cfg.hidden_size
    user_ks = sorted({k for k in ks or () if 1 <= k <= D})
    if ks and len(user_ks) < len(set(ks)):
        log.warning("k %s outside [1, %d] (the pooled dimension): skipped", sorted(set(ks) - set(user_ks)), D)
    wanted_choice = _choice(choose, list(sets), D)

    report, fitted = ReadReport(), {}
    for name, files in sets.items():
        texts: list[str] = []
        for f, path in enumerate(files):
            stream = (rec.text for rec in read_source(sentence_source(path, columns), report))
            texts += sample_texts(stream, max_sentences, seed=seed + f)
        acc, cut = accumulate(model, tokenizer, iter(texts), batch_tokens=batch_tokens, device=device)
        if acc.count < 2:
            raise ValueError(f"whitening needs at least 2 sentences, read {acc.count} for {name or '--sentences'}")
        mu, W = fit_whitening(acc)
        jl = jl_dimension(acc.count, max_dim=D)
        set_ks = sorted({*user_ks, D, jl} if ks else {*(k for k in DEFAULT_KS if k <= D), D, jl})
        if wanted_choice not in (None, "none") and _parse_row(wanted_choice)[0] == name:
            set_ks = sorted({*set_ks, _parse_row(wanted_choice)[1]})
        fitted[name] = {"mu": mu, "W": W, "ks": set_ks, "sentences": acc.count, "cut_sentences": cut,
                        "jl_dimension": jl, "files": [str(p) for p in files]}
        log.info("fit set %s: %d sentences (%d cut to %d tokens); JL estimate k = %d; k %s", name or "--sentences",
                 acc.count, cut, model.cfg.max_length, jl, set_ks)
    report.check(on_error)

    eval_report, pooled = ReadReport(), {}
    for path in eval_files:
        recs = list(read_pair_file(path, eval_report, PairSource(paths=(path,))))
        unique = list(dict.fromkeys(s for p in recs for s in (p.a, p.b)))
        index = {s: k for k, s in enumerate(unique)}
        vec = embed(model, tokenizer, unique, pooled=True, batch_tokens=batch_tokens, device=device).astype(np.float64)
        pooled[str(path)] = (vec[[index[p.a] for p in recs]], vec[[index[p.b] for p in recs]],
                             [p.label for p in recs])
    eval_report.check(on_error)
    scores: dict[str, dict[str, dict]] = {}
    for name, f in fitted.items():
        for setting, row in score_ks(pooled, f["mu"], f["W"], f["ks"]).items() if pooled else ():
            scores[setting if setting == "none" else f"{name}/{setting}" if name else setting] = row
    mean = {s: float(np.mean([v["spearman"] for v in row.values()])) for s, row in scores.items()}
    rows = ["none", *(_row(n, k) for n, f in fitted.items() for k in f["ks"])]
    if wanted_choice is not None:
        if wanted_choice not in rows:
            raise ValueError(f"--choose {choose!r} names no setting; choose from {', '.join(rows)}")
        chosen, how = wanted_choice, "--choose"
    else:  # best mean; ties go to no whitening, then to the smaller k
        chosen = max(rows, key=lambda r: (mean[r], r == "none", -_parse_row(r)[1] if r != "none" else 0))
        how = "best mean dev spearman"
    for setting in rows if scores else ():
        log.info("%-20s mean Spearman %6.2f  %s", setting, mean[setting],
                 "  ".join(f"{Path(n).parent.name}/{Path(n).stem} {v['spearman']:.2f}"
                           for n, v in scores[setting].items()))

    fit_name, k = (None, None) if chosen == "none" else _parse_row(chosen)
    if fit_name is not None:
        f = fitted[fit_name]
        model.whitening = Whitening(f["mu"], f["W"], k)
    model.save(out, tokenizer_from=tokenizer_file(model_dir))
    all_sentences = [p for files in sets.values() for p in files]
    fit_on_eval = sorted({str(Path(p).resolve()) for p in all_sentences} & {str(Path(p).resolve()) for p in eval_files})
    first = next(iter(fitted.values()))
    result = {"choice": chosen, "k": k, "fit": fit_name, "chosen_by": how, "dim": D,
              "fits": {n: {x: f[x] for x in ("files", "sentences", "cut_sentences", "jl_dimension", "ks")}
                       for n, f in fitted.items()},
              "max_sentences_per_file": max_sentences, "seed": seed,
              # the first fit set's figures under the keys of a one-set run
              "sentences": first["sentences"], "cut_sentences": first["cut_sentences"],
              "jl_dimension": first["jl_dimension"], "ks": first["ks"], "sentence_files": all_sentences,
              "eval_files": [str(p) for p in eval_files], "fit_on_eval_sentences": fit_on_eval,
              "mean_spearman": mean, "scores": scores, "chosen_mean_spearman": mean.get(chosen),
              "unwhitened_mean_spearman": mean.get("none")}
    metrics_file = out / METRICS_FILE
    base = metrics_file if metrics_file.is_file() else model_dir / METRICS_FILE  # keep the training metrics
    existing = json.loads(base.read_text(encoding="utf-8")) if base.is_file() else {}
    existing["whitening"] = result
    write_json(metrics_file, existing)
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(metrics_path, result)
    log.info("%s saved in %s", "no whitening" if k is None else f"whitening {chosen}", out)
    return result
