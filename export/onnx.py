"""PyTorch task checkpoints -> one ONNX bundle directory (``models.bundle`` is the contract).

``export_bundle(out, ner=CKPT, similarity=CKPT, precisions=[...])`` writes::

    OUT/
      bundle.json          manifest: tasks, graphs (IO names, opset, parity), metrics, provenance, SHA-256
      tokenizer.json       the checkpoints' tokenizer (every task must share the vocabulary)
      <prefix>.<precision>.onnx   per task and precision (ner.int8.onnx, sim.fp32.onnx, ...)
      MODEL_CARD.md        data, terms, metrics, limits, from the manifest (``models.card``)

Variants the registry marks ``calibrated`` (static int8) need ``calibration``: per task, texts of its
training data (:class:`export.variants.CalibrationTexts`), of which ``calibration_size`` are drawn with
``calibration_seed``; without them the export fails (it never calibrates on the parity sample).

``base=BUNDLE`` replaces only the given tasks of an existing bundle: its other tasks are kept as they are
(graph files, settings, metrics, their part of the provenance), and the checkpoints must use its tokenizer and
normalisation. For a bundle whose other checkpoints are gone (``ropenlp export --base``).

Any registered task kind is a keyword (``export.tasks``: ``ner``, ``similarity``, ...). Steps per task,
the same for every kind: load the checkpoint (its exporter) -> ``torch.onnx.export`` of the exporter's
graph -> the precision registry's variants (``models.precisions``: the optimised fp32 reference, then
each variant from its reference, ``export.variants``) -> parity on sample texts: the reference against
PyTorch fails the export above ``tolerance``; the others against their reference, recorded. The
bundle is assembled in a staging directory next to OUT and moved into place only when everything
passed, so a failed export never leaves a half-written bundle.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import ropenlp
from export.errors import ExportError, stage
from export.quantize_static import Feeds, draw_texts, row_feeds
from export.tasks import EXPORTERS, TaskExporter
from export.variants import CalibrationTexts
from models.bundle import (
    FORMAT_VERSION,
    MANIFEST,
    Dataset,
    Manifest,
    Provenance,
    TaskSpec,
    write_manifest,
)
from models.card import write_model_card
from models.normalize import Normalize
from models.precisions import (
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_CALIBRATION_SEED,
    DEFAULT_CALIBRATION_SIZE,
    REFERENCE,
)
from models.precisions import NAMES as PRECISIONS
from models.precisions import PRECISIONS as PRECISION_KINDS
from models.tasks import TASK_FILE, read_task, tokenizer_file
from models.text import Tokenizer

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
DEFAULT_TOLERANCE = 1e-3
__all__ = ["DEFAULT_TOLERANCE", "PRECISIONS", "CalibrationTexts", "ExportError", "detect_task", "export_bundle"]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def export_bundle(
    out: str | Path,
    checkpoints: Mapping[str, str | Path] | None = None,
    *,
    precisions: Iterable[str] | Mapping[str, Iterable[str]] = (REFERENCE,),
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
    calibration: Mapping[str, CalibrationTexts] | None = None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    calibration_seed: int = DEFAULT_CALIBRATION_SEED,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
    base: str | Path | None = None,
    **by_task: str | Path | None,
) -> Manifest:
    """Export task checkpoints into one bundle at ``out``; return its manifest.

    The checkpoints: ``checkpoints`` ``{task: path}`` and / or one keyword per task (``ner=...``,
    ``similarity=...``: any kind in ``export.tasks``). ``precisions``: any of the precision registry's
    (``models.precisions``; each variant's reference is built too, and shipped only when asked for), for
    every task, or per task as ``{"ner": [...], "similarity": [...]}`` (e.g. int8 NER beside an fp32
    similarity model whose whitening amplifies int8 noise). ``sample_texts``: texts for the parity checks
    (default ``SAMPLE_TEXTS``). ``tolerance``: the largest reference-vs-PyTorch difference accepted.
    ``calibration``: ``{task: CalibrationTexts}`` for the calibrated variants (static int8), drawn as
    ``calibration_size`` texts with ``calibration_seed``; ranges by ``calibration_method``. ``base``: a bundle
    whose tasks not given here are kept (``out`` may be ``base`` itself, with ``overwrite``).
    Raises ``ExportError``.
    """
    from export.graphs import DEFAULT_OPSET
    from export.parity import SAMPLE_TEXTS

    out = Path(out)
    if opset is not None and opset < 17:
        raise ExportError(f"opset {opset} is too old: LayerNormalization needs opset >= 17")
    if exporter not in ("legacy", "dynamo"):
        raise ExportError(f"unknown exporter {exporter!r}: choose legacy or dynamo")
    given = {**(checkpoints or {}), **{k: v for k, v in by_task.items() if v is not None}}
    unknown = sorted(set(given) - set(EXPORTERS))
    if unknown:
        raise ExportError(f"no exporter for task(s) {unknown} (known: {', '.join(EXPORTERS)})")
    paths = {task: Path(given[task]) for task in EXPORTERS if task in given}  # registry order
    if not paths:
        raise ExportError(f"nothing to export: give a checkpoint of at least one task ({', '.join(EXPORTERS)})")
    for task, path in paths.items():
        _check_checkpoint(task, path)
    wanted = _precisions_by_task(precisions, list(paths))
    calibration = dict(calibration or {})
    _check_calibration(wanted, calibration, calibration_method)
    tokenizer, tokenizer_json = _shared_tokenizer(paths)
    recorded = _recorded_normalize(paths)
    normalize = _normalize(recorded)
    kept = _Base.load(Path(base), recorded, list(paths), tokenizer_json) if base is not None else None
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
        tasks = {task: _export_task(EXPORTERS[task], path, staging, tokenizer=tokenizer, texts=texts,
                                    precisions=wanted[task], tolerance=tolerance, opset=opset or DEFAULT_OPSET,
                                    exporter=exporter, per_channel=per_channel,
                                    calibration=calibration.get(task), size=calibration_size,
                                    seed=calibration_seed, method=calibration_method)
                 for task, path in paths.items()}  # fmt: skip
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            name=name or out.name,
            lowercase=_lowercase(tokenizer_json),
            normalize=normalize,
            tasks=tasks,
            provenance=Provenance(
                base_checkpoint=base_checkpoint or _describe_checkpoints(paths),
                training_data=datasets,
                ropenlp_version=ropenlp.__version__,
                notes=notes,
            ),
        )
        if kept is not None:
            manifest = kept.merge(manifest, staging, name=name, base_checkpoint=base_checkpoint)
        manifest = publish(staging, out, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%s)", out, ", ".join(f.name for f in sorted(out.iterdir())))
    return manifest


class _Base:
    """The bundle ``export_bundle(base=...)`` starts from: the tasks it keeps and how they are merged."""

    def __init__(self, path: Path, manifest: Manifest, keep: list[str]):
        self.path, self.manifest, self.keep = path, manifest, keep

    @classmethod
    def load(cls, path: Path, recorded: Mapping[str, Normalize], tasks: list[str], tokenizer_json: dict) -> _Base:
        """``recorded``: the normalisation each new checkpoint recorded; ``tasks``: the tasks they replace."""
        from models.bundle import BundleError, load_manifest

        try:
            manifest = load_manifest(path)
        except (BundleError, OSError) as e:
            raise ExportError(f"--base {path}: not a bundle that loads: {e}") from None
        with open(path / manifest.tokenizer, encoding="utf-8") as f:
            theirs = json.load(f)
        try:
            _same_tokenizer(theirs, tokenizer_json, "the bundle", "the checkpoints")
        except ExportError as e:
            raise ExportError(f"--base {path}: its tokenizer differs from the checkpoints': {e}") from None
        wrong = {t: n.describe() for t, n in recorded.items() if n != manifest.normalize}
        if wrong:
            raise ExportError(f"--base {path}: it normalises as {manifest.normalize.describe()!r}, the checkpoints "
                              f"were trained with {wrong}: one bundle normalises one way")
        keep = [task for task in manifest.tasks if task not in tasks]
        if not keep:
            log.warning("--base %s: every task of it is replaced; only its name and provenance carry over", path)
        return cls(path, manifest, keep)

    def merge(self, new: Manifest, staging: Path, *, name: str | None, base_checkpoint: str | None) -> Manifest:
        """``new`` (the exported tasks, in ``staging``) with the kept tasks' graphs copied beside them."""
        old = self.manifest
        for task in self.keep:
            for graph in old.tasks[task].graphs.values():
                if (staging / graph.file).exists():
                    raise ExportError(f"--base {self.path}: its {task} graph {graph.file} has the name of a new graph")
                shutil.copyfile(self.path / graph.file, staging / graph.file)
        order = [*EXPORTERS, *(t for t in old.tasks if t not in EXPORTERS)]
        tasks = {**{t: old.tasks[t] for t in self.keep}, **new.tasks}
        sources = _sources(old.provenance.base_checkpoint, list(old.tasks))
        sources.update(_sources(new.provenance.base_checkpoint, list(new.tasks)))
        names = {d.name for d in new.provenance.training_data}
        prov = new.provenance.model_copy(update={
            "base_checkpoint": base_checkpoint or "; ".join(f"{t}: {sources[t]}" for t in order if t in tasks
                                                            and sources.get(t)) or None,
            "training_data": [*(d for d in old.provenance.training_data if d.name not in names),
                              *new.provenance.training_data],
            "notes": _join_notes(old.provenance.notes, new.provenance.notes, (
                f"{', '.join(new.tasks)} replaced by ropenlp export --base (kept: {', '.join(self.keep) or 'none'})")),
        })
        return new.model_copy(update={"name": name or old.name, "normalize": old.normalize,
                                      "tasks": {t: tasks[t] for t in order if t in tasks}, "provenance": prov})


def _join_notes(*notes: str | None) -> str:
    """The notes' ``; ``-separated parts in order, each once: a bundle re-exported with ``--base`` again and
    again says "similarity replaced ..." once, not once per export."""
    return "; ".join(dict.fromkeys(p for n in notes if n for p in n.split("; ") if p))


def _sources(described: str | None, tasks: list[str]) -> dict[str, str]:
    """``{task: checkpoint}`` from a provenance's ``base_checkpoint`` (:func:`_describe_checkpoints`' form:
    one path for every task, or ``task: path; task: path``)."""
    if not described:
        return {}
    parts = [p.partition(": ") for p in described.split("; ")]
    if all(sep and task in tasks for task, sep, _ in parts):
        return {task: path for task, _, path in parts}
    return dict.fromkeys(tasks, described)


def detect_task(path: str | Path) -> str:
    """The task of a checkpoint, from its ``ropenlp.json``; ExportError when it is not a task checkpoint of a
    kind with an exporter."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint directory")
    try:
        task = read_task(path).get("task")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path / TASK_FILE}: not valid JSON: {e}") from None
    if task not in EXPORTERS:
        found = "missing" if not (path / TASK_FILE).is_file() else f"task = {task!r}"
        raise ExportError(f"{path}: not a ropenlp task checkpoint ({TASK_FILE} {found}; expected a directory "
                          f"written by a task model's save: {', '.join(EXPORTERS)})")
    return task


# --------------------------------------------------------------------------------------------
# Checks on the inputs
# --------------------------------------------------------------------------------------------


def _precisions_by_task(precisions: Iterable[str] | Mapping[str, Iterable[str]],
                        tasks: list[str]) -> dict[str, list[str]]:
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


def _check_precisions(precisions: Iterable[str]) -> list[str]:
    given = list(dict.fromkeys(precisions))
    bad = [p for p in given if p not in PRECISIONS]
    if bad or not given:
        raise ExportError(f"precision(s) {bad or given} not supported: choose from {', '.join(PRECISIONS)}")
    return [p for p in PRECISIONS if p in given]


def _check_calibration(wanted: Mapping[str, list[str]], calibration: Mapping[str, CalibrationTexts],
                       method: str) -> None:
    """Every task that gets a calibrated variant has calibration texts (never the parity sample, silently)."""
    from models.precisions import CALIBRATION_METHODS

    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method {method!r}: choose from {', '.join(CALIBRATION_METHODS)}")
    unknown = sorted(set(calibration) - set(wanted))
    if unknown:
        raise ExportError(f"calibration data given for {unknown}, but the bundle has only {list(wanted)}")
    for task, names in wanted.items():
        need = [p for p in names if PRECISION_KINDS[p].calibrated]
        if not need:
            continue
        given = calibration.get(task)
        if given is None:
            raise ExportError(
                f"{', '.join(need)} of the {task} model needs calibration texts: a few hundred are drawn from the "
                f"task's training data (CLI: --calibration-data {task}=FILE, or a checkpoint whose run recorded "
                "its training data); int8-dynamic needs none but its results depend on the batch")
        if not any(isinstance(t, str) and t.strip() for t in given.texts):
            raise ExportError(f"the {task} calibration data ({given.source}) holds no text")


def _check_checkpoint(task: str, path: Path) -> None:
    """The directory holds a checkpoint of that task (or, for a kind that accepts one, a plain Hugging
    Face RoFormer directory without ``ropenlp.json``)."""
    exp = EXPORTERS[task]
    if exp.plain_checkpoint and path.is_dir() and not (path / TASK_FILE).exists():
        found = task
    else:
        found = detect_task(path)
    if found != task:
        raise ExportError(f"{path}: a {found} checkpoint was given as the {task} model")
    if not (path / "config.json").is_file():
        raise ExportError(f"{path}: config.json is missing (a checkpoint holds the encoder in Hugging Face format)")
    for f in exp.required_files:
        if not (path / f).is_file():
            raise ExportError(f"{path}: {f} is missing (the {task} head's weights)")


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
        _same_tokenizer(data, other, f"the {first} checkpoint ({checkpoints[first]})",
                       f"the {task} checkpoint ({checkpoints[task]})")
    return tok, data


def _same_tokenizer(a: dict, b: dict, what_a: str, what_b: str) -> None:
    """ExportError unless the tokenizer JSONs ``a`` and ``b`` are the same (one bundle has one tokenizer)."""
    va, vb = a.get("model", {}).get("vocab", {}), b.get("model", {}).get("vocab", {})
    if va != vb:
        diff = sorted(set(va.items()) ^ set(vb.items()), key=lambda kv: kv[1])[:5]
        raise ExportError(f"{what_a} and {what_b} have different vocabularies ({len(va)} vs {len(vb)} tokens; first "
                          f"differences: {diff}): one bundle has one tokenizer, so both models must share it")
    if a != b:
        raise ExportError(f"{what_a} and {what_b} share a vocabulary but their tokenizers differ in normalisation or "
                          "pre-tokenization (e.g. lowercase): one bundle has one tokenizer")


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
# One task, the same way for every kind
# --------------------------------------------------------------------------------------------


def _export_task(exp: TaskExporter, path: Path, staging: Path, *, tokenizer: Tokenizer, texts: list[str],
                 precisions: list[str], tolerance: float, opset: int, exporter: str, per_channel: bool,
                 calibration: CalibrationTexts | None, size: int, seed: int, method: str) -> TaskSpec:
    """Load, check against the tokenizer and the encoder's positions, export, build and check the variants,
    and the task's manifest spec."""
    from export import variants

    model = _load(exp, path).eval()
    enc_cfg = model.encoder.cfg
    _check_vocab(path, tokenizer, enc_cfg.vocab_size)
    _check_length(path, model.cfg.max_length, enc_cfg.max_position_embeddings)
    graph = exp.graph(model).eval()
    with stage(f"PyTorch on the sample texts ({exp.kind})"):
        parity = exp.parity(model, graph, tokenizer, texts)
    options = build_options(exp, model.cfg, _normalizing(tokenizer, path), texts, calibration, size=size, seed=seed,
                            method=method, per_channel=per_channel)
    built = variants.build(graph, staging, prefix=exp.file_prefix, task=exp.kind, output=exp.output,
                           output_axes=exp.output_axes, precisions=precisions, opset=opset, exporter=exporter,
                           encoder_cfg=enc_cfg, options=options)
    with stage(f"the parity check of the {exp.kind} graphs on ONNX Runtime"):
        report = variants.check({p: b.file for p, b in built.items()}, parity, tolerance=tolerance, texts=len(texts))
    for p, r in report.items():
        log.info("%s %s parity: %s", exp.kind, p, ", ".join(f"{k}={_fmt(v)}" for k, v in r.items()))
    return exp.spec(model, variants.specs(built, report, keep=precisions), _metrics(path))


def calibration_feeds(tokenizer, texts: Sequence[str], *, kind: str, settings) -> list[Feeds]:
    """Graph inputs for calibration: the rows the service runs for ``texts`` (the task exporter's ``rows``:
    NER every window as the service cuts them, similarity one row per text cut to ``max_length``), each its
    own batch of 1 without padding. ``settings``: the task's manifest spec or model config."""
    if kind not in EXPORTERS:
        raise ValueError(f"unknown task kind {kind!r}: choose one of {sorted(EXPORTERS)}")
    return row_feeds(EXPORTERS[kind].rows(settings, tokenizer, texts))


def calibration_from_bundle(bundle: str | Path, task: str, texts: Iterable[str], *,
                            n: int = DEFAULT_CALIBRATION_SIZE, seed: int = DEFAULT_CALIBRATION_SEED) -> list[Feeds]:
    """Calibration feeds for one task of a written bundle: its tokenizer, window length and stride."""
    from models.bundle import load_manifest

    bundle = Path(bundle)
    manifest = load_manifest(bundle, verify_hashes=False)
    spec = manifest.tasks[task]
    tok = Tokenizer.load(bundle / manifest.tokenizer, lowercase=manifest.lowercase)
    return calibration_feeds(tok, draw_texts(texts, n, seed=seed), kind=spec.kind, settings=spec)


CHECK_ROWS = 64  # calibration rows added to the sample's for the batch-dependence check


def build_options(exp: TaskExporter, settings, tokenizer: Tokenizer, texts: Sequence[str],
                  calibration: CalibrationTexts | None, *, size: int, seed: int, method: str,
                  per_channel: bool = True, source_note: str | None = None):
    """The builders' options for one task: calibration feeds (``size`` texts drawn with ``seed`` from
    ``calibration``, each row its own unpadded batch) and the rows of the batch-dependence check (the
    sample's and some calibration rows: many lengths)."""
    from export.variants import BuildOptions, CalibrationRecord

    check = exp.rows(settings, tokenizer, texts)
    feeds, record = [], None
    if calibration is not None:
        drawn = draw_texts(calibration.texts, size, seed=seed)
        rows = exp.rows(settings, tokenizer, drawn)
        feeds = row_feeds(rows)
        record = CalibrationRecord(source=calibration.source, texts=len(drawn), seed=seed)
        check = check + rows[:CHECK_ROWS]
    return BuildOptions(per_channel=per_channel, calibration=feeds, calibration_record=record, method=method,
                        check_rows=check, pad_id=tokenizer.pad_id, source_note=source_note)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _load(exp: TaskExporter, path: Path):
    try:
        return exp.load(path)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        raise ExportError(f"{path}: cannot load the checkpoint: {e}") from e


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


def _normalizing(tokenizer: Tokenizer, checkpoint: Path) -> Tokenizer:
    """The tokenizer as the service will run it for this checkpoint: with its recorded normalisation (the rows
    static int8 is calibrated on must be the rows it will see)."""
    from models.normalize import Normalizer

    norm = _normalize(_recorded_normalize({"": checkpoint}))
    return tokenizer.normalizing(Normalizer(norm) if norm.enabled else None)


def _normalize(recorded: Mapping[str, Normalize]) -> Normalize:
    """The normalisation the checkpoints were trained with (``recorded``: :func:`_recorded_normalize`); those
    that record one must agree (one bundle has one tokenizer)."""
    if len(set(recorded.values())) > 1:
        raise ExportError(f"the checkpoints were trained with different normalisations "
                          f"{ {t: n.describe() for t, n in recorded.items()} }: one bundle normalises one way")
    return next(iter(recorded.values()), Normalize())


def _recorded_normalize(checkpoints: Mapping[str, Path]) -> dict[str, Normalize]:
    """The normalisation each checkpoint recorded in its ``ropenlp.json`` (those that record none left out)."""
    metas = {task: read_task(path) for task, path in checkpoints.items()}
    return {task: Normalize.parse(m["normalize"]) for task, m in metas.items() if "normalize" in m}


def _lowercase(tokenizer_json: dict) -> bool:
    norm = tokenizer_json.get("normalizer") or {}
    return bool(norm.get("lowercase", False)) if norm.get("type") == "BertNormalizer" else False


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def publish(staging: Path, out: Path, manifest):
    """Finish a bundle built in ``staging``: its manifest (hashes of every file) and model card, then
    ``staging`` takes the place of ``out``. Returns the manifest as written."""
    manifest = write_manifest(staging, manifest)
    write_model_card(staging, manifest)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return manifest
