"""The masked-LM head and model in the Hugging Face ``RoFormerForMaskedLM`` layout.

``RoFormerForMlm`` = :class:`models.roformer.RoFormerEncoder` + :class:`MlmHead` (decoder tied to the
word embeddings). A saved model is a ``RoFormerForMaskedLM`` directory: ``config.json``,
``model.safetensors`` (``roformer.*`` encoder keys + ``cls.predictions.*``) and the tokenizer file; it
loads in ``transformers.RoFormerForMaskedLM`` / ``RoFormerModel`` and ``RoFormerEncoder.from_pretrained``.
The vocabulary projection is computed only at masked positions: on a small model with a large
character vocabulary that is most of the head's cost saved. Pre-training (training/mlm.py) and the
ELECTRA generator (training/electra.py) both use it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.roformer import ACTIVATIONS, RoFormerConfig, RoFormerEncoder, read_checkpoint

log = logging.getLogger(__name__)

IGNORE = -100  # target of unmasked positions

# Our head parameter -> its name in a RoFormerForMaskedLM checkpoint.
HEAD_NAMES = {
    "head.dense.weight": "cls.predictions.transform.dense.weight",
    "head.dense.bias": "cls.predictions.transform.dense.bias",
    "head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "head.bias": "cls.predictions.bias",
}
TIED_NAMES = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")  # tied, never stored apart


class MlmHead(nn.Module):
    """dense -> activation -> LayerNorm -> x @ word_embeddings.T + bias (the decoder is tied)."""

    def __init__(self, cfg: RoFormerConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.emb_dim)
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.norm = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        nn.init.normal_(self.dense.weight, std=cfg.initializer_range)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.act(self.dense(hidden)))  # (..., E)
        return F.linear(x, word_embeddings, self.bias)  # (..., V)


class RoFormerForMlm(nn.Module):
    def __init__(self, encoder: RoFormerEncoder):
        super().__init__()
        self.encoder = encoder
        self.head = MlmHead(encoder.cfg)

    @property
    def cfg(self) -> RoFormerConfig:
        return self.encoder.cfg

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, targets=None):
        """``targets`` (B, T) with -100 at unmasked positions: returns (logits at the masked positions
        (N, V), mean cross-entropy). Without targets: (logits (B, T, V), None)."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        emb = self.encoder.tok_emb.weight  # (V, E)
        if targets is None:
            return self.head(hidden, emb), None
        selected = targets != IGNORE  # (B, T)
        logits = self.head(hidden[selected], emb)  # (N, V): only where a token is predicted
        if logits.shape[0] == 0:  # nothing masked in this batch: a zero loss that still has a graph
            return logits, hidden.sum() * 0.0
        return logits, F.cross_entropy(logits.float(), targets[selected])

    # Hugging Face format ---------------------------------------------------------------------

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        state = {"roformer." + k: v for k, v in self.encoder.hf_state_dict().items()}
        head = self.state_dict()
        return state | {hf: head[ours].detach().contiguous() for ours, hf in HEAD_NAMES.items()}

    def save_pretrained(self, path: str | Path, *, tokenizer_file: str | Path | None = None) -> None:
        """A ``RoFormerForMaskedLM`` directory (config.json, model.safetensors, + the tokenizer file)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        hf_cfg = self.cfg.to_hf_dict() | {"architectures": ["RoFormerForMaskedLM"],
                                          "tie_word_embeddings": True}
        (path / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
        save_file(self.hf_state_dict(), str(path / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer_file is not None:
            src = Path(tokenizer_file)
            if src.resolve() != (path / src.name).resolve():
                shutil.copyfile(src, path / src.name)

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> RoFormerForMlm:
        """Any HF RoFormer folder; its ``cls.predictions`` head is loaded when present, else a new one."""
        cfg, state = read_checkpoint(path)
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        model = cls(RoFormerEncoder(cfg))
        model.encoder.load_hf_state_dict(state, source=str(path))
        head_keys = {hf.removeprefix("roformer.") for hf in HEAD_NAMES.values()}
        present = head_keys & state.keys()
        if present == head_keys:
            model.head.load_state_dict({ours.removeprefix("head."): state[hf]
                                        for ours, hf in HEAD_NAMES.items()})
        elif present:
            raise ValueError(f"{path}: incomplete MLM head, missing {sorted(head_keys - present)}")
        else:
            log.info("%s has no MLM head: starting a new one", path)
        unknown = [k for k in state if k.startswith("cls.") and k not in head_keys and k not in TIED_NAMES]
        if unknown:
            raise ValueError(f"{path}: unexpected head keys {unknown}")
        return model
