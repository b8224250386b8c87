"""Task models: RoFormer encoder + GlobalPointer head (NER) or + pooling/whitening (similarity).

A task checkpoint is a directory that stays a valid Hugging Face RoFormer checkpoint::

    CKPT/
      config.json, model.safetensors   the encoder (transformers.RoFormerModel loads it as is;
                                       a RoFormer-Sim linear pooler is stored there as pooler.dense.*)
      vocab.txt or tokenizer.json      the tokenizer the encoder was trained with
      ropenlp.json                     {"task": "ner" | "similarity", ...head config}
      head.safetensors                 NER: the GlobalPointer weights
      whitening.safetensors            similarity: the folded whitening (optional)

``forward(..., targets=None)`` returns ``(output, loss)``; training never reaches into heads.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from models.global_pointer import HEADS, global_pointer_loss, sparse_global_pointer_loss
from models.pooling import Pooling, PoolingMode, l2_normalize
from models.roformer import RoFormerEncoder, read_checkpoint
from models.spans import DECODES, Decode
from models.whitening import Whitening

TASK_FILE = "ropenlp.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


@dataclass(frozen=True)
class NerConfig:
    labels: tuple[str, ...]
    head: Literal["gp", "egp"] = "egp"
    head_size: int = 64
    threshold: float = 0.0
    max_length: int = 256  # tokens per window, [CLS]/[SEP] included
    stride: int = 128  # tokens between window starts
    decode: Decode = "nested"  # "flat": non-overlapping spans only (models.spans.non_overlapping)
    normalize: str = "none"  # text normalisation before the tokenizer (models.normalize): none | width | t2s | width,t2s

    def __post_init__(self):
        from models.normalize import Normalize

        Normalize.parse(self.normalize)  # ValueError naming the choices
        if not self.labels:
            raise ValueError("NerConfig.labels must not be empty")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"NerConfig.labels has duplicates: {self.labels}")
        if self.head not in HEADS:
            raise ValueError(f"NerConfig.head must be one of {sorted(HEADS)}, got {self.head!r}")
        if not 0 < self.stride <= self.max_length - 2:
            raise ValueError(f"NerConfig.stride must be in 1..max_length-2 ({self.max_length - 2}), got {self.stride}")
        if self.decode not in DECODES:
            raise ValueError(f"NerConfig.decode must be one of {list(DECODES)}, got {self.decode!r}")


@dataclass(frozen=True)
class SimilarityConfig:
    pooling: PoolingMode = "cls"
    max_length: int = 64


class NerModel(nn.Module):
    def __init__(self, encoder: RoFormerEncoder, cfg: NerConfig):
        super().__init__()
        self.encoder, self.cfg = encoder, cfg
        self.head = HEADS[cfg.head](encoder.cfg.hidden_size, len(cfg.labels), cfg.head_size,
                                    max_len=encoder.cfg.max_position_embeddings)

    def forward(self, input_ids, attention_mask, token_type_ids=None, targets=None):
        """Span scores (B, C, T, T); ``targets`` dense (B, C, T, T) 0/1, or sparse (B, C, K) flat span
        indices i*T+j padded with -1, gives the multilabel categorical cross-entropy as loss."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        scores = self.head(hidden, attention_mask)  # (B, C, T, T)
        loss = None
        if targets is not None:
            if targets.dtype == torch.long and targets.dim() == 3:
                loss = sparse_global_pointer_loss(scores=scores, spans=targets)
            else:
                loss = global_pointer_loss(scores=scores, targets=targets)
        return scores, loss

    def save(self, path: str | Path, *, tokenizer_from: str | Path | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        self.encoder.save_pretrained(path)
        state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(path / "head.safetensors"))
        _write_task(path, "ner", dataclasses.asdict(self.cfg) | {"labels": list(self.cfg.labels)})
        _copy_tokenizer(tokenizer_from, path)


class SimilarityModel(nn.Module):
    """Encoder -> pooling -> [whitening] -> L2 normalisation: cosine similarity is a dot product."""

    def __init__(self, encoder: RoFormerEncoder, cfg: SimilarityConfig, whitening: Whitening | None = None):
        super().__init__()
        self.encoder, self.cfg = encoder, cfg
        self.pooling = Pooling(cfg.pooling, encoder.cfg.hidden_size)
        self.whitening = whitening

    def pooled(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Pooled vectors before whitening and normalisation (B, H): what whitening is fitted on."""
        need_all = self.pooling.needs_hidden_states
        hidden = self.encoder(input_ids, attention_mask, token_type_ids, output_hidden_states=need_all)
        return self.pooling(hidden, attention_mask)

    def forward(self, input_ids, attention_mask, token_type_ids=None, targets=None):
        x = self.pooled(input_ids, attention_mask, token_type_ids)  # (B, H)
        if self.whitening is not None:
            x = self.whitening(x)  # (B, k)
        return l2_normalize(x), None

    @property
    def dim(self) -> int:
        return self.whitening.out_dim if self.whitening is not None else self.encoder.cfg.hidden_size

    def save(self, path: str | Path, *, tokenizer_from: str | Path | None = None) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path, extra=self.pooling.hf_state_dict())
        if self.whitening is not None:
            self.whitening.save(path / "whitening.safetensors")
        elif (path / "whitening.safetensors").exists():
            (path / "whitening.safetensors").unlink()
        _write_task(path, "similarity", dataclasses.asdict(self.cfg))
        _copy_tokenizer(tokenizer_from, path)


def read_task(path: str | Path) -> dict:
    """The ``ropenlp.json`` of a task checkpoint, or {} for a plain Hugging Face directory."""
    f = Path(path) / TASK_FILE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def load_ner(path: str | Path, **encoder_overrides) -> NerModel:
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_task(path)
    if meta.get("task") != "ner":
        raise ValueError(f"{path}: not an NER checkpoint ({TASK_FILE} task = {meta.get('task')!r})")
    meta.pop("task")
    cfg = NerConfig(**meta | {"labels": tuple(meta["labels"])})
    model = NerModel(RoFormerEncoder.from_pretrained(path, **encoder_overrides), cfg)
    model.head.load_state_dict(load_file(str(path / "head.safetensors")))
    return model


def load_similarity(path: str | Path, *, pooling: PoolingMode | None = None, **encoder_overrides) -> SimilarityModel:
    """A similarity checkpoint, or any HF RoFormer / RoFormer-Sim directory (pooling then defaults to
    "linear" when the checkpoint has ``pooler.dense`` weights, else "cls")."""
    path = Path(path)
    meta = read_task(path)
    if meta and meta.get("task") != "similarity":
        raise ValueError(f"{path}: not a similarity checkpoint ({TASK_FILE} task = {meta.get('task')!r})")
    _, state = read_checkpoint(path)
    default_pool = "linear" if "pooler.dense.weight" in state else "cls"
    cfg = SimilarityConfig(**{k: v for k, v in meta.items() if k != "task"})
    if pooling is not None or not meta:
        cfg = dataclasses.replace(cfg, pooling=pooling or default_pool)
    encoder = RoFormerEncoder.from_pretrained(path, **encoder_overrides)
    whitening = Whitening.load(path / "whitening.safetensors") if (path / "whitening.safetensors").is_file() else None
    model = SimilarityModel(encoder, cfg, whitening)
    model.pooling.load_hf_state_dict(state)
    return model


def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer file a checkpoint carries (tokenizer.json preferred over vocab.txt)."""
    for name in TOKENIZER_FILES:
        if (Path(path) / name).is_file():
            return Path(path) / name
    raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt")


def _write_task(path: Path, task: str, cfg: dict) -> None:
    (path / TASK_FILE).write_text(json.dumps({"task": task} | cfg, indent=2, ensure_ascii=False) + "\n",
                                  encoding="utf-8")


def _copy_tokenizer(src: str | Path | None, dst: Path) -> None:
    if src is None:
        return
    src = Path(src)
    src_file = tokenizer_file(src) if src.is_dir() else src
    if src_file.resolve() != (dst / src_file.name).resolve():
        shutil.copyfile(src_file, dst / src_file.name)
