"""What the bench scripts share: machine facts, random models, bundles and their checkpoints, real texts,
round-robin timing, percentiles and the analytical FLOP count. Not a test; imported by bench/*.py.

Nothing here imports torch at module level: the service bench runs where only the serving extra is
installed (torch is needed only for random models and the PyTorch references).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.common")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Peak arithmetic of the 2 cores these figures are taken on (AMD Zen 4, AVX-512 VNNI; FACTS.md).
PEAK_GFLOPS = {"fp32": 220.0, "int8": 900.0}


# --------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------


def split_passthrough(argv: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(own arguments, arguments after ``--`` that go to the command under test)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        return argv, []
    k = argv.index("--")
    return argv[:k], argv[k + 1:]


def machine_info() -> dict:
    """CPU model, cores usable by this process, load average (a shared machine shows here), versions."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in (
        "numpy",
        "onnxruntime",
        "onnxruntime-gpu",
        "torch",
        "transformers",
        "tokenizers",
        "litestar",
        "uvicorn",
        "httpx",
    ):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "nice": os.nice(0),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


# --------------------------------------------------------------------------------------------
# Random models (speed only) and the checkpoints behind a bundle
# --------------------------------------------------------------------------------------------


def random_checkpoint(
    task: str,
    out: Path,
    *,
    layers: int,
    hidden: int,
    vocab_size: int = 8000,
    texts: Sequence[str] = (),
    like: Path | None = None,
) -> Path:
    """A random-weight task checkpoint (for speed measurements only). The vocabulary holds the characters
    of the parity sample and of ``texts`` (so real text tokenizes as it would with a real vocabulary).

    ``like``: a bundle whose task settings the random model copies (NER head, labels, window length and
    stride; similarity pooling and length), so its graphs cost what the bundle's do; the encoder's size
    is ``layers`` x ``hidden`` (a bundle does not record it)."""
    import torch

    from export.parity import SAMPLE_TEXTS
    from models.roformer import RoFormerConfig, RoFormerEncoder
    from models.tasks import NerModel, SimilarityModel

    chars = sorted({c for t in (*SAMPLE_TEXTS, *texts) for c in t.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars[: vocab_size - 5]
    vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    cfg = RoFormerConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=4 * hidden,
    )
    task_cfg = _random_task_config(task, like)
    if task == "ner":
        model = NerModel(RoFormerEncoder(cfg), task_cfg)
    else:
        model = SimilarityModel(RoFormerEncoder(cfg), task_cfg)
    model.save(out, tokenizer_from=out / "vocab.txt")
    return out


def _random_task_config(task: str, like: Path | None):
    """A random model's task settings: those of the bundle ``like`` when given, else fixed ones."""
    from models.tasks import NerConfig, SimilarityConfig

    spec = None
    if like is not None:
        from models.bundle import load_manifest

        spec = load_manifest(like, verify_hashes=False).tasks.get(task)
    if task == "ner":
        if spec is None:
            labels = ("PER", "LOC", "ORG", "GPE", "TIME", "NUM", "PRODUCT", "EVENT")
            return NerConfig(labels=labels, head="egp", max_length=256, stride=128)
        return NerConfig(labels=tuple(spec.labels), head=spec.head, max_length=spec.max_length, stride=spec.stride,
                         decode=spec.decode)
    if spec is None:
        return SimilarityConfig(pooling="cls", max_length=64)
    return SimilarityConfig(pooling=spec.pooling, max_length=spec.max_length)


def random_bundle(
    workdir: Path,
    *,
    layers: int,
    hidden: int,
    precisions: Sequence[str] = ("fp32", "int8"),
    texts: Sequence[str] = (),
    like: Path | None = None,
) -> tuple[Path, dict[str, Path]]:
    """A two-task bundle of random models under ``workdir``: (bundle dir, {task: checkpoint dir}); ``like``
    as in :func:`random_checkpoint`. Static int8 is calibrated on ``texts`` (the bench's sentences)."""
    from export.onnx import export_bundle
    from export.variants import CalibrationTexts

    ckpts = {
        task: random_checkpoint(
            task, workdir / f"ckpt-{task}", layers=layers, hidden=hidden, texts=texts, like=like
        )
        for task in ("ner", "similarity")
    }
    bundle = workdir / "bundle"
    log.info(
        "exporting a random %d-layer / %d-dim bundle (%s) to %s", layers, hidden, "+".join(precisions), bundle
    )
    calibration = {task: CalibrationTexts("the bench's texts", list(texts)) for task in ckpts} if texts else None
    export_bundle(
        bundle, **ckpts, precisions=tuple(precisions), name=f"random-{layers}x{hidden}", overwrite=True,
        calibration=calibration,
    )
    return bundle, ckpts


def bundle_checkpoints(bundle: Path) -> dict[str, Path]:
    """{task: checkpoint dir} named by a bundle's provenance, where those directories still exist.

    ``export_bundle`` records one path (both tasks from one checkpoint) or ``"ner: P; similarity: Q"``.
    """
    from models.bundle import load_manifest

    manifest = load_manifest(bundle)
    base = manifest.provenance.base_checkpoint or ""
    found: dict[str, Path] = {}
    parts = [p.strip() for p in base.split(";") if p.strip()]
    for part in parts:
        task, sep, path = part.partition(":")
        if sep and task.strip() in ("ner", "similarity") and Path(path.strip()).is_dir():
            found[task.strip()] = Path(path.strip())
    if not found and len(parts) == 1 and Path(parts[0]).is_dir():
        found = {task: Path(parts[0]) for task in manifest.tasks}
    return {t: p for t, p in found.items() if t in manifest.tasks}


def checkpoint_config(ckpt: Path) -> dict:
    """The encoder's config.json and the head's ropenlp.json of a task checkpoint, as plain dicts (no torch)."""
    cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    task_file = ckpt / "ropenlp.json"
    head = json.loads(task_file.read_text(encoding="utf-8")) if task_file.is_file() else {}
    return {"encoder": cfg, "head": head}


# --------------------------------------------------------------------------------------------
# Texts from ../shared/data
# --------------------------------------------------------------------------------------------

TEXT_SETS = {
    "cluener": "CLUENER dev texts (news sentences, <= 50 chars)",
    "stsb": "STS-B (zh) dev sentences, both columns",
    "cmeee-long": "CMeEE dev texts concatenated into ~{long_chars}-char documents (NER: sliding windows)",
}


def load_texts(name: str, *, long_chars: int = 500, data: Path = SHARED_DATA) -> tuple[list[str], str]:
    """(texts, description) of one text set; the built-in parity sample when ``data`` is missing."""
    if not data.is_dir():
        from export.parity import SAMPLE_TEXTS

        if name == "cmeee-long":
            long = "".join(SAMPLE_TEXTS)
            return [(long * (long_chars // len(long) + 1))[:long_chars]], f"built-in sample ({data} missing)"
        return list(SAMPLE_TEXTS), f"built-in sample ({data} missing)"
    if name == "cluener":
        with open(data / "cluener" / "dev.json", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
    elif name == "stsb":
        texts = []
        with open(data / "stsb_zh" / "dev.tsv", encoding="utf-8") as f:
            for line in f:
                cols = line.rstrip("\n").split("\t")
                texts += [c for c in cols[:2] if c.strip()]
    elif name == "cmeee-long":
        texts, doc = [], ""
        with open(data / "cmeee" / "dev.jsonl", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    doc += json.loads(line)["text"]
                    if len(doc) >= long_chars:
                        texts.append(doc[:long_chars])
                        doc = ""
    else:
        raise ValueError(f"unknown text set {name!r}: choose from {', '.join(TEXT_SETS)}")
    return texts, TEXT_SETS[name].format(long_chars=long_chars)


def load_pairs(*, data: Path = SHARED_DATA) -> list[tuple[str, str]]:
    """STS-B (zh) dev sentence pairs (the built-in sample, paired up, when ``data`` is missing)."""
    path = data / "stsb_zh" / "dev.tsv"
    if not path.is_file():
        from export.parity import SAMPLE_TEXTS

        return list(zip(SAMPLE_TEXTS[::2], SAMPLE_TEXTS[1::2]))
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    return [(r[0], r[1]) for r in rows if len(r) >= 2 and r[0].strip() and r[1].strip()]


def chunk(texts: Sequence, size: int, k: int) -> list:
    """The k-th group of ``size`` consecutive items, cycling over ``texts``."""
    start = (k * size) % len(texts)
    return [texts[(start + i) % len(texts)] for i in range(size)]


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def round_robin(
    calls: Mapping[str, Callable[[int], object]],
    *,
    warmup: int = 1,
    min_rounds: int = 3,
    max_rounds: int = 1000,
    seconds: float = float("inf"),
) -> dict[str, list[float]]:
    """Seconds per call, per variant. Round ``r`` calls every variant once with the same argument ``r``
    (the same input for all), in an order rotated by ``r`` so that no variant always runs first or
    right after another: a busy neighbour on a shared machine slows all variants alike. Each variant is
    first called ``warmup`` times (untimed). Stops after ``max_rounds``, or once ``seconds`` have passed
    and at least ``min_rounds`` are done."""
    names = list(calls)
    for name in names:
        for r in range(warmup):
            calls[name](r)
    times: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    for r in range(max_rounds):
        if r >= min_rounds and time.perf_counter() - t_start >= seconds:
            break
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t0 = time.perf_counter()
            calls[name](r)
            times[name].append(time.perf_counter() - t0)
    return times


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean / max in milliseconds and the sample count."""
    if not len(seconds):
        return {"n": 0}
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {
        "n": int(ms.size),
        "p50_ms": float(p50),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
    }


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# --------------------------------------------------------------------------------------------
# FLOPs, counted from the config (multiply-add = 2 FLOPs; matmuls only: norms, softmax, GELU, RoPE
# and masking are a few % at these sizes and are left out)
# --------------------------------------------------------------------------------------------


def encoder_flops(enc: Mapping, batch: int, seq: int) -> float:
    """One padded (batch, seq) pass of the encoder: 2 x matmul parameters per token (embedding projection,
    q/k/v/out, FFN up/down) + the attention T^2 terms (q.k^T and p.v: 4 T^2 H per layer and row)."""
    H, I, L = enc["hidden_size"], enc["intermediate_size"], enc["num_hidden_layers"]
    E = enc.get("embedding_size") or H
    per_token = 2 * (E * H if E != H else 0) + L * 2 * (4 * H * H + 2 * H * I)
    attention = L * 4 * seq * seq * H
    return float(batch) * (seq * per_token + attention)


def ner_head_flops(head: Mapping, hidden: int, num_types: int, batch: int, seq: int) -> float:
    """GlobalPointer ("gp": per-type q/k, C x T^2 x D products) or Efficient GlobalPointer ("egp":
    shared q/k, T^2 x D products plus the per-type start/end bias) on one padded batch."""
    D, C, T = head.get("head_size", 64), num_types, seq
    if head.get("head", "egp") == "gp":
        per_row = T * 2 * hidden * 2 * C * D + 2 * C * T * T * D
    else:
        per_row = T * (2 * hidden * 2 * D + 2 * 2 * D * 2 * C) + 2 * T * T * D + 2 * C * T * T
    return float(batch) * per_row


def sim_head_flops(pooling: str, hidden: int, dim: int, whitening: bool, batch: int) -> float:
    """Pooling (RoFormer-Sim's linear pooler: H x H) and whitening (H x k) per row."""
    return float(batch) * (2 * hidden * hidden * (pooling == "linear") + 2 * hidden * dim * whitening)


def write_json(path: Path | None, result: dict) -> None:
    """A script's ``--json OUT``: every figure it printed, as UTF-8 JSON (parent folders made)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")
