"""PyTorch task checkpoints -> one ONNX bundle directory (``models.bundle`` is the contract).

``export_bundle(out, ner=CKPT, similarity=CKPT, precisions=("fp32", "int8"))`` writes::

    OUT/
      bundle.json          manifest: tasks, graphs (IO names, opset, parity), metrics, provenance, SHA-256
      tokenizer.json       the checkpoints' tokenizer (both tasks must share the vocabulary)
      ner.<precision>.onnx
      sim.<precision>.onnx

Steps per task: load the checkpoint -> ``torch.onnx.export`` (export.graphs) -> ORT optimiser
(fp32) -> dynamic int8 / fp16 from the optimised graph (export.convert) -> parity on sample texts
(export.parity): fp32 against PyTorch, fails the export above ``tolerance``; int8 / fp16 against
fp32, recorded. The bundle is assembled in a staging directory next to OUT and moved into place
only when everything passed, so a failed export never leaves a half-written bundle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import ropenlp
from models.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    Dataset,
    GraphSpec,
    Manifest,
    NerTask,
    Precision,
    Provenance,
    SimilarityTask,
    write_manifest,
)
from models.tasks import TASK_FILE, read_task, tokenizer_file
from models.text import Tokenizer

log = logging.getLogger(__name__)

PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
FILE_PREFIX = {"ner": "ner", "similarity": "sim"}
METRICS_FILE = "metrics.json"
DEFAULT_TOLERANCE = 1e-3


class ExportError(RuntimeError):
    """An export that cannot produce a correct bundle: the message names the checkpoint or graph and why."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def export_bundle(
    out: str | Path,
    *,
    ner: str | Path | None = None,
    similarity: str | Path | None = None,
    precisions: Iterable[str] | Mapping[str, Iterable[str]] = ("fp32",),
    sample_texts: Sequence[str] | None = None,
    name: str | None = None,
    training_data: Iterable[Dataset | Mapping[str, str] | tuple[str, str]] = (),
    notes: str | None = None,
    base_checkpoint: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int | None = None,
    exporter: str = "legacy",
    per_channel: bool = True,
    overwrite: bool = False,
) -> Manifest:
    """Export the NER and/or similarity checkpoint into one bundle at ``out``; return its manifest.

    ``precisions``: any of fp32, fp16, int8 (fp32 is always built as the reference; it is shipped
    only when asked for), for every task, or per task as ``{"ner": [...], "similarity": [...]}``
    (e.g. int8 NER beside an fp32 similarity model whose whitening amplifies int8 noise). ``sample_texts``: texts for the parity checks (default ``SAMPLE_TEXTS``).
    ``tolerance``: the largest fp32-vs-PyTorch difference accepted. Raises ``ExportError``.
    """
    from export.graphs import DEFAULT_OPSET
    from export.parity import SAMPLE_TEXTS

    out = Path(out)
    if opset is not None and opset < 17:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset >= 17")
    if exporter not in ("legacy", "dynamo"):
        raise ExportError(f"unknown exporter {exporter!r}: choose legacy or dynamo")
    checkpoints = {task: Path(p) for task, p in (("ner", ner), ("similarity", similarity)) if p is not None}
    if not checkpoints:
        raise ExportError("nothing to export: give an NER checkpoint, a similarity checkpoint, or both")
    for task, path in checkpoints.items():
        _check_checkpoint(task, path)
    wanted = _precisions_by_task(precisions, list(checkpoints))
    tokenizer, tokenizer_json = _shared_tokenizer(checkpoints)
    datasets = [_dataset(d) for d in training_data]
    texts = [t for t in (sample_texts if sample_texts is not None else SAMPLE_TEXTS) if t.strip()]
    if not texts:
        raise ExportError("no sample texts for the parity check (the sample is empty)")
    _check_out(out, overwrite=overwrite)

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        tokenizer.save(staging / "tokenizer.json")
        common = {"tokenizer": tokenizer, "texts": texts, "tolerance": tolerance,
                  "opset": opset or DEFAULT_OPSET, "exporter": exporter, "per_channel": per_channel}
        tasks: dict[str, Any] = {}
        if "ner" in checkpoints:
            tasks["ner"] = _export_ner(checkpoints["ner"], staging, precisions=wanted["ner"], **common)
        if "similarity" in checkpoints:
            tasks["similarity"] = _export_similarity(checkpoints["similarity"], staging,
                                                     precisions=wanted["similarity"], **common)
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            name=name or out.name,
            lowercase=_lowercase(tokenizer_json),
            **tasks,
            provenance=Provenance(
                base_checkpoint=base_checkpoint or _describe_checkpoints(checkpoints),
                training_data=datasets,
                ropenlp_version=ropenlp.__version__,
                notes=notes,
            ),
        )
        manifest = write_manifest(staging, manifest)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%s)", out, ", ".join(f.name for f in sorted(out.iterdir())))
    return manifest


def detect_task(path: str | Path) -> str:
    """'ner' or 'similarity' from a checkpoint's ``ropenlp.json``; ExportError when it is not a task checkpoint."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint directory")
    try:
        task = read_task(path).get("task")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path / TASK_FILE}: not valid JSON: {e}") from None
    if task not in ("ner", "similarity"):
        found = "missing" if not (path / TASK_FILE).is_file() else f"task = {task!r}"
        raise ExportError(f"{path}: not a ropenlp task checkpoint ({TASK_FILE} {found}; "
                          "expected a directory written by NerModel.save or SimilarityModel.save)")
    return task


# --------------------------------------------------------------------------------------------
# Checks on the inputs
# --------------------------------------------------------------------------------------------


def _precisions_by_task(precisions: Iterable[str] | Mapping[str, Iterable[str]],
                        tasks: list[str]) -> dict[str, list[Precision]]:
    """The precisions to ship per task: one list for every task, or a mapping task -> list."""
    if not isinstance(precisions, Mapping):
        return {task: _check_precisions(precisions) for task in tasks}
    unknown = sorted(set(precisions) - set(tasks))
    if unknown:
        raise ExportError(f"precisions given for {unknown}, but the bundle has only {tasks}")
    missing = [task for task in tasks if task not in precisions]
    if missing:
        raise ExportError(f"no precision given for {missing}")
    return {task: _check_precisions(precisions[task]) for task in tasks}


def _check_precisions(precisions: Iterable[str]) -> list[Precision]:
    given = list(dict.fromkeys(precisions))
    bad = [p for p in given if p not in PRECISIONS]
    if bad or not given:
        raise ExportError(f"precision(s) {bad or given} not supported: choose from {', '.join(PRECISIONS)}")
    return [p for p in PRECISIONS if p in given]


def _check_checkpoint(task: str, path: Path) -> None:
    """The directory holds a checkpoint of that task. A similarity model may also be a plain Hugging Face
    RoFormer / RoFormer-Sim directory (no ``ropenlp.json``): ``load_similarity`` picks its pooling."""
    if task == "similarity" and path.is_dir() and not (path / TASK_FILE).exists():
        found = "similarity"
    else:
        found = detect_task(path)
    if found != task:
        raise ExportError(f"{path}: a {found} checkpoint was given as the {task} model")
    if not (path / "config.json").is_file():
        raise ExportError(f"{path}: config.json is missing (a checkpoint holds the encoder in Hugging Face format)")
    if task == "ner" and not (path / "head.safetensors").is_file():
        raise ExportError(f"{path}: head.safetensors is missing (the GlobalPointer weights)")


def _shared_tokenizer(checkpoints: Mapping[str, Path]) -> tuple[Tokenizer, dict]:
    """The tokenizer of the checkpoints and its JSON; error if the checkpoints' tokenizers differ."""
    import tempfile

    loaded: dict[str, tuple[Tokenizer, dict]] = {}
    for task, path in checkpoints.items():
        try:
            tok = Tokenizer.load(tokenizer_file(path))
        except (FileNotFoundError, ValueError) as e:
            raise ExportError(f"{path}: cannot load the tokenizer: {e}") from None
        with tempfile.TemporaryDirectory() as tmp:
            loaded[task] = tok, json.loads(tok.save(Path(tmp) / "tokenizer.json").read_text(encoding="utf-8"))
    (first, (tok, data)), *rest = loaded.items()
    for task, (_, other) in rest:
        if other.get("model", {}).get("vocab") != data.get("model", {}).get("vocab"):
            a, b = data.get("model", {}).get("vocab", {}), other.get("model", {}).get("vocab", {})
            diff = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])[:5]
            raise ExportError(
                f"the {first} checkpoint ({checkpoints[first]}) and the {task} checkpoint ({checkpoints[task]}) "
                f"have different vocabularies ({len(a)} vs {len(b)} tokens; first differences: {diff}): "
                "one bundle has one tokenizer, so both models must share it"
            )
        if other != data:
            raise ExportError(
                f"the {first} and {task} checkpoints share a vocabulary but their tokenizers differ in "
                "normalisation or pre-tokenization (e.g. lowercase): one bundle has one tokenizer"
            )
    return tok, data


def _check_out(out: Path, *, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise ExportError(f"{out} exists and is not empty (pass overwrite=True / --overwrite to replace a bundle)")
    if not (out / MANIFEST).is_file():
        raise ExportError(f"{out} is not empty and holds no {MANIFEST}: refusing to overwrite what is not a bundle")


def _check_vocab(path: Path, tokenizer: Tokenizer, vocab_size: int) -> None:
    if tokenizer.vocab_size > vocab_size:
        raise ExportError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the encoder's embedding "
                          f"only {vocab_size}: token ids would fall outside it")


def _check_length(path: Path, max_length: int, max_positions: int) -> None:
    if max_length > max_positions:
        raise ExportError(f"{path}: max_length {max_length} exceeds the encoder's max_position_embeddings "
                          f"{max_positions}")


# --------------------------------------------------------------------------------------------
# Per task
# --------------------------------------------------------------------------------------------


def _load_checked(loader, path: Path, tokenizer):
    """The task model in eval mode, its encoder and task configs and training metrics, checked against
    the bundle's tokenizer and the encoder's position range."""
    model = _load(loader, path).eval()
    enc_cfg, cfg = model.encoder.cfg, model.cfg
    _check_vocab(path, tokenizer, enc_cfg.vocab_size)
    _check_length(path, cfg.max_length, enc_cfg.max_position_embeddings)
    return model, enc_cfg, cfg, _metrics(path)


def _export_ner(path: Path, staging: Path, *, tokenizer, texts, precisions, tolerance, opset,
                exporter, per_channel) -> NerTask:
    import torch

    from export import parity
    from export.graphs import NerGraph
    from models.tasks import load_ner

    model, enc_cfg, cfg, metrics = _load_checked(load_ner, path, tokenizer)
    graph = NerGraph(model).eval()
    batches = parity.ner_batches(tokenizer, texts, max_length=cfg.max_length, stride=cfg.stride)

    def torch_run(batch):
        with torch.no_grad():
            return graph(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()

    def decode(outputs):
        return parity.decode_entities(outputs, batches, texts=texts, labels=cfg.labels,
                                      threshold=cfg.threshold, decode=cfg.decode)

    reference = parity.run_all(torch_run, batches)
    ref_entities = decode(reference)

    def check(files: dict[str, Path]) -> dict[str, dict]:
        fp32 = parity.run_all(parity.onnx_runner(files["fp32"]), batches)
        diff = parity.max_abs_diff_spans(fp32, reference, batches)
        _fail_above(diff, tolerance, files["fp32"], "scores")
        fp32_entities = decode(fp32)
        report = {"fp32": {"reference": "pytorch", "max_abs_diff": diff, "texts": len(texts),
                           **parity.entity_agreement(ref_entities, fp32_entities)}}
        for p in ("int8", "fp16"):
            if p in files:
                got = parity.run_all(parity.onnx_runner(files[p]), batches)
                _check_finite(got, files[p])
                report[p] = {"reference": "fp32", "max_abs_diff": parity.max_abs_diff_spans(got, fp32, batches),
                             "texts": len(texts), **parity.entity_agreement(fp32_entities, decode(got))}
        return report

    graphs = _export_graphs("ner", graph, staging, precisions=precisions, opset=opset, exporter=exporter,
                            per_channel=per_channel, check=check, encoder_cfg=enc_cfg)
    return NerTask(graphs=graphs, max_length=cfg.max_length, metrics=metrics, labels=list(cfg.labels),
                   head=cfg.head, threshold=cfg.threshold, stride=cfg.stride, decode=cfg.decode)


def _export_similarity(path: Path, staging: Path, *, tokenizer, texts, precisions, tolerance, opset,
                       exporter, per_channel) -> SimilarityTask:
    import torch

    from export import parity
    from export.graphs import SimilarityGraph
    from models.tasks import load_similarity

    model, enc_cfg, cfg, metrics = _load_checked(load_similarity, path, tokenizer)
    graph = SimilarityGraph(model).eval()
    batches = parity.sim_batches(tokenizer, texts, max_length=cfg.max_length)

    def torch_run(batch):
        with torch.no_grad():
            return graph(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()

    reference = np.concatenate(parity.run_all(torch_run, batches))  # (N, k), one row per text

    def check(files: dict[str, Path]) -> dict[str, dict]:
        fp32 = np.concatenate(parity.run_all(parity.onnx_runner(files["fp32"]), batches))
        diff = parity.max_abs_diff([fp32], [reference])
        _fail_above(diff, tolerance, files["fp32"], "sentence vectors")
        report = {"fp32": {"reference": "pytorch", "max_abs_diff": diff, "texts": len(texts),
                           **parity.cosine_diffs(reference, fp32)}}
        for p in ("int8", "fp16"):
            if p in files:
                got = np.concatenate(parity.run_all(parity.onnx_runner(files[p]), batches))
                _check_finite([got], files[p])
                report[p] = {"reference": "fp32", "max_abs_diff": parity.max_abs_diff([got], [fp32]),
                             "texts": len(texts), **parity.cosine_diffs(fp32, got)}
        return report

    graphs = _export_graphs("similarity", graph, staging, precisions=precisions, opset=opset, exporter=exporter,
                            per_channel=per_channel, check=check, encoder_cfg=enc_cfg)
    return SimilarityTask(graphs=graphs, max_length=cfg.max_length, metrics=metrics, pooling=cfg.pooling,
                          dim=model.dim, whitening=model.whitening is not None)


def _export_graphs(task: str, graph, staging: Path, *, precisions, opset, exporter, per_channel, check,
                   encoder_cfg) -> dict[str, GraphSpec]:
    """Export, optimise and convert one task's graph; run ``check``; GraphSpecs of the shipped files."""
    from export import convert
    from export.graphs import to_onnx

    prefix = FILE_PREFIX[task]
    raw = staging / f"{prefix}.raw.onnx"
    files = {"fp32": staging / f"{prefix}.fp32.onnx"}
    with _stage(f"torch.onnx.export ({exporter} exporter) of the {task} graph"):
        to_onnx(graph, raw, opset=opset, exporter=exporter)
    with _stage(f"ONNX Runtime's optimiser on {files['fp32'].name}"):
        convert.optimize(raw, files["fp32"], num_heads=encoder_cfg.num_attention_heads,
                         hidden_size=encoder_cfg.hidden_size)
    raw.unlink()
    if "int8" in precisions:
        with _stage(f"dynamic int8 quantization of {prefix}.fp32.onnx"):
            files["int8"] = convert.quantize_int8(files["fp32"], staging / f"{prefix}.int8.onnx",
                                                  per_channel=per_channel)
    if "fp16" in precisions:
        with _stage(f"fp16 conversion of {prefix}.fp32.onnx"):
            files["fp16"] = convert.convert_fp16(files["fp32"], staging / f"{prefix}.fp16.onnx")
    with _stage(f"the parity check of the {task} graphs on ONNX Runtime"):
        report = check(files)
    for p, r in report.items():
        log.info("%s %s parity: %s", task, p, ", ".join(f"{k}={_fmt(v)}" for k, v in r.items()))
    if "fp32" not in precisions:
        files.pop("fp32").unlink()
    specs = {}
    for p, f in files.items():
        inputs, outputs = convert.graph_io(f)
        specs[p] = GraphSpec(file=f.name, precision=p, opset=convert.opset_of(f), inputs=inputs, outputs=outputs,
                             parity=report[p])
    return specs


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stage(what: str):
    """Turn a third-party failure (exporter, optimiser, quantizer, converter) into an ExportError naming the stage."""
    try:
        yield
    except ExportError:
        raise
    except Exception as e:  # these tools raise many kinds of errors
        raise ExportError(f"{what} failed: {type(e).__name__}: {e}") from e


def _load(loader, path: Path):
    try:
        return loader(path)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        raise ExportError(f"{path}: cannot load the checkpoint: {e}") from e


def _fail_above(diff: float, tolerance: float, file: Path, what: str) -> None:
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(f"{file.name}: fp32 ONNX {what} differ from PyTorch by up to {diff:.3g} on the sample "
                          f"texts (tolerance {tolerance:g}): the exported graph is not faithful")


def _check_finite(outputs: Sequence[np.ndarray], file: Path) -> None:
    for out in outputs:
        if np.isnan(out).any() or np.isposinf(out).any():
            raise ExportError(f"{file.name}: the graph produced NaN or +inf on the sample texts")


def _metrics(path: Path) -> dict:
    """The checkpoint's metrics.json, limited to what the manifest holds (numbers, strings, objects)."""
    f = path / METRICS_FILE
    if not f.is_file():
        return {}
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{f}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ExportError(f"{f}: expected a JSON object of metrics")
    kept = {k: v for k, v in raw.items() if isinstance(v, (int, float, str, dict)) and not isinstance(v, bool)}
    if len(kept) != len(raw):
        log.warning("%s: skipped metrics that are not numbers, strings or objects: %s", f,
                    sorted(set(raw) - set(kept)))
    return kept


def _dataset(d: Dataset | Mapping[str, str] | tuple[str, str]) -> Dataset:
    """A training data set for the provenance: a Dataset, {"name": ..., "terms": ...} or (name, terms)."""
    if isinstance(d, Dataset):
        return d
    if isinstance(d, str):
        raise ExportError(f"training data {d!r}: expected (name, terms), not a bare string")
    try:
        return Dataset(**d) if isinstance(d, Mapping) else Dataset(name=d[0], terms=d[1])
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise ExportError(f"training data {d!r}: expected (name, terms) or {{'name': ..., 'terms': ...}} ({e})") from None


def _describe_checkpoints(checkpoints: Mapping[str, Path]) -> str:
    """The checkpoints' paths, relative to the working directory when under it (no machine layout in a
    shipped manifest: ``runs/ner_cluener/best``, not ``/home/me/ropenlp/runs/...``)."""
    here = Path.cwd().resolve()
    paths = {task: (p.resolve().relative_to(here).as_posix() if p.resolve().is_relative_to(here) else str(p.resolve()))
             for task, p in checkpoints.items()}
    if len(set(paths.values())) == 1:
        return next(iter(paths.values()))
    return "; ".join(f"{task}: {p}" for task, p in paths.items())


def _lowercase(tokenizer_json: dict) -> bool:
    norm = tokenizer_json.get("normalizer") or {}
    return bool(norm.get("lowercase", False)) if norm.get("type") == "BertNormalizer" else False


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
