"""The model card of a bundle: ``MODEL_CARD.md``, written from its manifest (data, terms, metrics, limits).

Torch-free. The exporter writes it beside ``bundle.json``; for a bundle exported before cards existed::

    python -m models.card BUNDLE_DIR [BUNDLE_DIR ...]

The card is not listed in the manifest's file hashes: regenerating it never invalidates a bundle.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from models.bundle import Manifest, TaskSpec, load_manifest
from models.precisions import PRECISIONS

CARD = "MODEL_CARD.md"

# What every bundle's results are bounded by, whatever its tasks.
GENERAL_LIMITS = (
    "Trained and evaluated only on the data listed above: expect lower scores on other domains, registers "
    "and scripts (the tokenizer is Chinese-first; Latin words are split into pieces).",
    "Metrics are on the development splits named in the metrics (no held-out test set unless named); "
    "they come from the training run's own evaluation.",
    "A reduced-precision graph is checked against its reference on a small sample only (see Graphs); "
    "check it on your own data before relying on small score differences.",
)
def _rounded(v: object) -> object:
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(_rounded(v), ensure_ascii=False)
    return str(v)


def _metrics(metrics: dict, prefix: str = "", depth: int = 2) -> list[str]:
    """One row per metric; nested objects flattened ``depth`` levels (deeper ones as JSON)."""
    rows = []
    for k, v in metrics.items():
        if isinstance(v, dict) and depth > 0:
            rows += _metrics(v, f"{prefix}{k}.", depth - 1)
        else:
            rows.append(f"| {prefix}{k} | {_value(v)} |")
    return rows


def _task(name: str, spec: TaskSpec) -> list[str]:
    lines = [f"## Task: {name}", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_value(v)} |" for k, v in {"max_length": spec.max_length, **spec.settings()}.items()]
    lines += ["", "### Metrics", ""]
    if spec.metrics:
        lines += ["| metric | value |", "|---|---|", *_metrics(spec.metrics)]
    else:
        lines.append("No metrics were recorded with the checkpoint.")
    lines += ["", "### Graphs", "", "| file | precision | how it is built | checked against | parity |",
              "|---|---|---|---|---|"]
    for p, g in spec.graphs.items():
        kind = PRECISIONS.get(p)
        parity = ", ".join(f"{k}={_value(v)}" for k, v in g.parity.items() if k != "reference")
        lines.append(f"| {g.file} | {p} | {kind.summary if kind else '?'} | {g.parity.get('reference', '?')} | "
                     f"{parity} |")
    quantized = [(g.file, g.quantization) for g in spec.graphs.values() if g.quantization is not None]
    if quantized:
        lines += ["", *(f"* `{file}`: {_quantization(q)}" for file, q in quantized)]
    return [*lines, ""]


def _quantization(q) -> str:
    """One line on how an int8 graph was quantized (``models.bundle.Quantization``)."""
    dependence = "" if q.batch_dependence is None else f"{q.batch_dependence:.2g}"
    if q.mode == "static":
        c = q.calibration
        how = (f"static int8, calibrated on {c.texts} texts of {c.source} (seed {c.seed}, {c.method}, "
               f"{c.rows} rows)" if c is not None else "static int8")
    else:
        how = "dynamic int8: activation scales computed per call over the whole batch"
    invariance = ("batch invariant" if q.batch_invariant else "batch-dependent: a text's scores follow its neighbours")
    if dependence:
        invariance += f" (max |alone - in a batch| {dependence} at export)"
    return (f"{how} ({q.format}; activations {q.activations}; weights {q.weights}); {q.matmuls_int8} MatMuls in "
            f"int8, {q.matmuls_fp32} in fp32; {invariance}" + (f"; quantized from {q.source}" if q.source else "") + ".")


def model_card(manifest: Manifest) -> str:
    """The card's Markdown, from the manifest alone."""
    prov = manifest.provenance
    lines = [f"# {manifest.name}", "",
             f"A ropenlp bundle (format {manifest.format_version}) with the task(s) "
             f"{', '.join(manifest.tasks)}: a RoFormer encoder and a head per task, as ONNX graphs served by "
             "ONNX Runtime (`ropenlp serve`, `ropenlp score`).", "",
             "## Data and terms", ""]
    if prov.training_data:
        lines += ["| data set | terms |", "|---|---|", *(f"| {d.name} | {d.terms} |" for d in prov.training_data)]
        lines += ["", "The weights inherit the terms of the data they were trained on: check them before use."]
    else:
        lines.append("The manifest lists no training data: ask whoever exported this bundle.")
    lines += ["", "## Provenance", "", f"* base checkpoint: {prov.base_checkpoint or 'not recorded'}",
              f"* created: {prov.created} with ropenlp {prov.ropenlp_version}"]
    if prov.notes:
        lines.append(f"* notes: {prov.notes}")
    norm = f"; normalisation: {manifest.normalize.describe()}" if manifest.normalize.enabled else ""
    lines += ["", f"Tokenizer: `{manifest.tokenizer}` (lowercase: {str(manifest.lowercase).lower()}{norm}).", ""]
    for name, spec in manifest.tasks.items():
        lines += _task(name, spec)
    lines += ["## Limits", "", *(f"* {line}" for line in GENERAL_LIMITS)]
    for name, spec in manifest.tasks.items():
        lines += [f"* {name}: {line}" for line in spec.limits]
    lines += ["", "Generated from `bundle.json` by `models.card` (`python -m models.card DIR`).", ""]
    return "\n".join(lines)


def write_model_card(bundle_dir: str | Path, manifest: Manifest | None = None) -> Path:
    """Write ``MODEL_CARD.md`` into a bundle directory (the manifest read from it when not given)."""
    bundle_dir = Path(bundle_dir)
    manifest = manifest if manifest is not None else load_manifest(bundle_dir)
    path = bundle_dir / CARD
    path.write_text(model_card(manifest), encoding="utf-8")
    return path


if __name__ == "__main__":  # python -m models.card BUNDLE_DIR ...
    for d in sys.argv[1:] or ["."]:
        print(write_model_card(d))
