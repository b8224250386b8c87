"""A pre-trained encoder made into a folder that is committed and shipped: ``ropenlp train release``.

The folder is a Hugging Face RoFormer directory (``config.json``, ``model.safetensors``, ``vocab.txt``)
that ``transformers.RoFormerModel.from_pretrained`` and ``--model.init`` load as they are, plus what a
later pre-training stage needs to continue exactly where this one stopped: the ELECTRA generator
(``generator/``) and discriminator head, or the MLM head (kept in ``model.safetensors`` under ``cls.*``).
Weights are stored in fp16 by default (half the size; a 4 x 256 encoder then weighs ~12 MB with its
generator), ``encoder.json`` records where it came from (the run's resolved config, metrics, the data
and its terms, and every stage behind it: ``stages``, oldest first, read from the record of the released
folder the run started from, so a stage released over its own predecessor keeps the lineage) and
``README.md`` is its card, written from that record.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from training.data import write_json
from training.electra import GENERATOR_DIR

RECORD_FILE = "encoder.json"
DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
WEIGHT_FILES = ("model.safetensors", "electra_head.safetensors")
COPIED = ("config.json", "vocab.txt", "tokenizer.json", "electra.json")


def _convert(src: Path, dst: Path, dtype: torch.dtype) -> int:
    """Copy a safetensors file with every floating tensor cast to ``dtype``; returns the bytes written."""
    from safetensors.torch import load_file, save_file

    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in load_file(src).items()}
    save_file(tensors, str(dst), metadata={"format": "pt"})
    return dst.stat().st_size


def _copy_model_dir(src: Path, dst: Path, dtype: torch.dtype) -> int:
    dst.mkdir(parents=True, exist_ok=True)
    size = 0
    for name in COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    for name in WEIGHT_FILES:
        if (src / name).is_file():
            size += _convert(src / name, dst / name, dtype)
    if not (dst / "model.safetensors").is_file():
        raise FileNotFoundError(f"{src}: no model.safetensors (expected the model/ folder of a pre-training run)")
    return size


def _stage(record: dict) -> dict:
    """One line of the lineage: what a stage was and what it reached."""
    return {k: record.get(k) for k in ("name", "objective", "whole_word", "steps", "heldout")}


def _earlier_stages(init: str | None, position: dict | None = None) -> list[dict]:
    """The stages behind a run's ``model.init``: the released folder's own ``stages`` (or, for a record
    written before stages were kept, the record itself), else one entry naming the folder. ``position``: the
    run's own final ``data_position``; a folder whose record ends there already holds this very stage (it was
    released onto the folder it started from, then released again): its last stage is this one, left out. A
    stage listed twice in a row (such a release before this check) is listed once."""
    if not init:
        return []
    path = Path(init) / RECORD_FILE
    if not path.is_file():  # a run's model/ folder or a foreign checkpoint: named, not described
        return [{"name": init, "objective": None, "whole_word": None, "steps": None, "heldout": None}]
    prev = json.loads(path.read_text(encoding="utf-8"))
    stages = prev.get("stages") or [_stage(prev)]
    if position is not None and prev.get("data_position") == position:
        stages = stages[:-1]
    return [s for k, s in enumerate(stages) if k == 0 or s != stages[k - 1]]


def release_encoder(model_dir: str | Path, out: str | Path, *, name: str, dtype: str = "fp16",
                    run_dir: str | Path | None = None, data_terms: str = "", overwrite: bool = False,
                    notes: str = "") -> dict:
    """Write the release folder ``out`` from a pre-training run's ``model/`` folder (``run_dir`` defaults
    to its parent: its ``metrics.json`` and ``config.resolved.toml`` go into the record)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    src, out = Path(model_dir), Path(out)
    run = Path(run_dir) if run_dir is not None else src.parent
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8")) if (run / "metrics.json").is_file() else {}
    init = metrics.get("config", {}).get("model", {}).get("init") or None
    # before ``out`` is replaced: it may be the folder this stage started from
    earlier = _earlier_stages(init, metrics.get("data_position"))
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists: pass overwrite to replace it")
        shutil.rmtree(out)
    size = _copy_model_dir(src, out, DTYPES[dtype])
    if (src / GENERATOR_DIR).is_dir():
        size += _copy_model_dir(src / GENERATOR_DIR, out / GENERATOR_DIR, DTYPES[dtype])
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    record = {
        "name": name,
        "format": "huggingface-roformer",
        "dtype": dtype,
        "weights_bytes": size,
        "objective": metrics.get("config", {}).get("mlm", {}).get("objective", "mlm"),
        "whole_word": metrics.get("config", {}).get("mlm", {}).get("whole_word", False),
        "architecture": {k: config.get(k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                   "num_attention_heads", "intermediate_size")},
        "steps": metrics.get("step"),
        "heldout": metrics.get("last_eval"),
        "data": metrics.get("data"),
        "data_position": metrics.get("data_position"),  # where the next stage continues the data
        "data_terms": data_terms,
        "continues": init,
        "training": metrics.get("config", {}).get("training"),
        "notes": notes,
    }
    record["stages"] = [*earlier, _stage(record)]
    record["steps_total"] = sum(s["steps"] or 0 for s in record["stages"])
    if (run / "config.resolved.toml").is_file():
        shutil.copyfile(run / "config.resolved.toml", out / "pretraining.config.toml")
    write_json(out / RECORD_FILE, record)
    (out / "README.md").write_text(encoder_card(record), encoding="utf-8")
    return record


def _stage_lines(record: dict) -> list[str]:
    stages = record.get("stages") or []
    if len(stages) < 2:
        return []
    lines = [f"* stages, oldest first ({record.get('steps_total', 0):,} steps in all):"]
    for k, s in enumerate(stages, 1):
        acc = (s.get("heldout") or {}).get("accuracy")
        reached = f", held-out accuracy {acc:.2%}" if acc is not None else ""
        lines.append(f"  {k}. {s['name']}: {s.get('objective') or '?'}, {s.get('steps') or '?'} steps{reached}")
    return lines


def encoder_card(record: dict) -> str:
    """The README.md of a released encoder, from its ``encoder.json`` record."""
    a = record["architecture"]
    held = record.get("heldout") or {}
    data = record.get("data") or {}
    objective = {"mlm": "masked LM", "electra": "ELECTRA replaced-token detection"}.get(record["objective"],
                                                                                       record["objective"])
    if record.get("whole_word"):
        objective += " with whole-word masking (jieba words)"
    lines = [
        f"# {record['name']}",
        "",
        f"A Chinese character-level RoFormer encoder pre-trained by ropenlp on two CPU cores: "
        f"{a['num_hidden_layers']} layers, hidden {a['hidden_size']}, {a['num_attention_heads']} heads, "
        f"FFN {a['intermediate_size']}, vocabulary {a['vocab_size']}; {objective}; weights in {record['dtype']}.",
        "",
        "It is a Hugging Face RoFormer directory: `transformers.RoFormerModel.from_pretrained(DIR)` loads it, and "
        "ropenlp fine-tunes it with `--model.init DIR`:",
        "",
        "```bash",
        "ropenlp train ner recipes/ner_cluener.toml --model.init DIR     # NER (GlobalPointer)",
        "ropenlp train sim recipes/sim_stsb.toml --model.init DIR        # sentence similarity",
        "ropenlp train mlm recipes/pretrain_v3.toml --model.init DIR     # a further pre-training stage",
        "```",
        "",
        "## Training",
        "",
        f"* steps in this stage: {record.get('steps')}; continues: {record.get('continues') or 'nothing (from scratch)'}",
        *_stage_lines(record),
        f"* data: {data.get('read', '?')}; {data.get('train_tokens', 0):,} training tokens an epoch",
        f"* held-out: {json.dumps(held, ensure_ascii=False)}",
        f"* resolved config: `pretraining.config.toml`; full record: `{RECORD_FILE}`",
    ]
    if record.get("notes"):
        lines += ["", record["notes"]]
    lines += ["", "## Terms", "", record.get("data_terms") or "See the terms of the pre-training data.", ""]
    return "\n".join(lines)
