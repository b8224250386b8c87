"""RoFormer encoder: BERT-style post-LN blocks whose self-attention rotates q and k by position (RoPE).

Read top to bottom: RoPE helpers -> RoFormerConfig -> SelfAttention -> FeedForward -> EncoderLayer
-> RoFormerEncoder -> checkpoint import/export (a rename table as data, every key and shape checked).

The parameters and ``config.json`` are those of ``transformers.RoFormerModel``, so a Hugging Face
RoFormer / RoFormer-Sim directory loads here unchanged and ``save_pretrained`` writes one that
``transformers`` loads back. Numerics match ``RoFormerModel`` (tested to 1e-4).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# RoPE. Convention (Su et al., RoFormer; as in transformers and bert4keras): channels are rotated
# in *interleaved pairs* (x0, x1), (x2, x3), ... by angle pos * theta_i, theta_i = base^(-2i/d):
#     rope(x) = x * cos + rotate_interleaved(x) * sin,  rotate_interleaved(x) = [-x1, x0, -x3, x2, ...]
# Angles are tabulated in float64 and the rotation runs in fp32 whatever the input dtype.
# --------------------------------------------------------------------------------------------


def rope_table(
    max_len: int, dim: int, *, base: float = 10000.0, half: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each (max_len, dim) fp32 with every angle repeated twice: [t0, t0, t1, t1, ...];
    ``half``: in the rotate-half layout, [t0, t1, ..., t0, t1, ...] (see :func:`use_half_rope_`)."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even dimension, got {dim}")
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)  # (dim/2,)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, dim/2)
    if half:
        angles = torch.cat([angles, angles], dim=-1)  # (L, dim): first halves, then second halves
    else:
        angles = torch.stack([angles, angles], dim=-1).flatten(-2)  # (L, dim) interleaved
    return angles.sin().float(), angles.cos().float()


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """[x0, x1, x2, x3, ...] -> [-x1, x0, -x3, x2, ...] on the last axis."""
    # stack + flatten rather than repeat_interleave: the latter exports a wrong Reshape to ONNX
    return torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x0 .. x(d/2-1), x(d/2) .. x(d-1)] -> [-x(d/2) .. -x(d-1), x0 .. x(d/2-1)] on the last axis."""
    d = x.shape[-1] // 2
    return torch.cat([-x[..., d:], x[..., :d]], dim=-1)


def apply_rope(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor, *, half: bool = False) -> torch.Tensor:
    """Rotate x (..., T, d) by position; sin/cos (T, d) broadcast over the leading axes. ``half``: x and
    the tables are in the rotate-half layout (:func:`use_half_rope_`)."""
    xf = x.float()
    return (xf * cos + (rotate_half(xf) if half else rotate_interleaved(xf)) * sin).to(x.dtype)


def half_layout(dim: int) -> torch.Tensor:
    """The channel order of the rotate-half layout: [0, 2, 4, ..., 1, 3, 5, ...] (the pairs' first
    members, then their second members), as indices into the interleaved order."""
    return torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])


def use_half_rope_(model: nn.Module) -> nn.Module:
    """Move every RoPE of ``model`` to the rotate-half layout, in place; the model computes the same
    function (to float rounding). For export only: the checkpoint format stays interleaved.

    Interleaved RoPE rotates pairs (x0, x1), (x2, x3), ...; in ONNX its two step-2 ``Slice``s are copied
    element by element and took 20 % of an int8 NER call (docs/performance.md). Permuting the output
    channels of the q and k projections within each head by :func:`half_layout` puts each pair's members
    d/2 apart, where the rotation is two contiguous halves (:func:`rotate_half`); q.k is unchanged, as
    both sides get the same permutation. Modules with a ``half_rope_`` method (attention, span heads)
    permute their own weights and switch their tables.
    """
    for m in model.modules():
        if hasattr(m, "half_rope_"):
            m.half_rope_()
    return model


def permute_outputs_(linear: nn.Linear, order: torch.Tensor) -> None:
    """Reorder a Linear's outputs: output k becomes the old output ``order[k]``."""
    linear.weight.data = linear.weight.data[order].contiguous()
    linear.bias.data = linear.bias.data[order].contiguous()


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class RoFormerConfig:
    """The fields of a Hugging Face RoFormer ``config.json`` that define the encoder, plus our options."""

    vocab_size: int = 12000
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    embedding_size: int | None = None  # None: same as hidden_size
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    rotary_value: bool = False
    # ropenlp option: attention scale log_512(n)/sqrt(d), n = real tokens of each sequence (floor 16).
    entropy_invariant_scale: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head dimension {self.head_dim} must be even for RoPE")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} not supported; choose from {sorted(ACTIVATIONS)}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def emb_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @classmethod
    def from_dict(cls, d: dict) -> "RoFormerConfig":
        """From a HF ``config.json`` dict: known fields are taken, HF-only fields ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "RoFormerConfig":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_hf_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["embedding_size"] = self.emb_dim
        d.update(model_type="roformer", architectures=["RoFormerModel"])
        return d


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, cfg: RoFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.rope_half = False  # use_half_rope_: q, k (and v) channels in the rotate-half layout

    def half_rope_(self) -> None:
        if self.rope_half:
            return
        H, D = self.cfg.num_attention_heads, self.cfg.head_dim
        order = (torch.arange(H)[:, None] * D + half_layout(D)).flatten()  # within each head
        permute_outputs_(self.query, order)
        permute_outputs_(self.key, order)
        if self.cfg.rotary_value:  # v rotated too: its channels move, so the output projection's inputs follow
            permute_outputs_(self.value, order)
            self.out.weight.data = self.out.weight.data[:, order].contiguous()
        self.rope_half = True

    def forward(
        self,
        x: torch.Tensor,
        key_mask: torch.Tensor,
        sin: torch.Tensor,
        cos: torch.Tensor,
        q_scale: torch.Tensor | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.cfg.num_attention_heads, self.cfg.head_dim

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        q, k = apply_rope(q, sin, cos, half=self.rope_half), apply_rope(k, sin, cos, half=self.rope_half)
        if self.cfg.rotary_value:
            v = apply_rope(v, sin, cos, half=self.rope_half)
        if q_scale is not None:  # entropy-invariant scale, per sequence: (B, 1, 1, 1)
            q = q * q_scale.to(q.dtype)
        dropout = self.cfg.attention_probs_dropout_prob if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, H * D)  # (B, T, hidden)
        return self.out(y)


class FeedForward(nn.Module):
    def __init__(self, cfg: RoFormerConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class EncoderLayer(nn.Module):
    """Post-LN as in BERT: x = LN(x + drop(attn(x))); x = LN(x + drop(ffn(x)))."""

    def __init__(self, cfg: RoFormerConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x, key_mask, sin, cos, q_scale):
        x = self.attn_norm(x + self.drop(self.attn(x, key_mask, sin, cos, q_scale)))
        return self.ffn_norm(x + self.drop(self.ffn(x)))


class RoFormerEncoder(nn.Module):
    """Token (+ token-type) embeddings -> LayerNorm -> [projection] -> N encoder layers.

    ``forward(input_ids, attention_mask, token_type_ids=None, output_hidden_states=False)`` returns
    the last hidden states (B, T, hidden), or the tuple of all hidden states (embedding output first,
    as in transformers) when ``output_hidden_states`` is set.
    """

    def __init__(self, cfg: RoFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.emb_dim, padding_idx=cfg.pad_token_id)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.emb_dim)
        self.emb_norm = nn.LayerNorm(cfg.emb_dim, eps=cfg.layer_norm_eps)
        self.emb_proj = nn.Linear(cfg.emb_dim, cfg.hidden_size) if cfg.emb_dim != cfg.hidden_size else None
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        sin, cos = rope_table(cfg.max_position_embeddings, cfg.head_dim)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.apply(self._init_weights)

    def half_rope_(self) -> None:
        """The tables in the rotate-half layout (the layers permute their own weights)."""
        sin, cos = rope_table(self.cfg.max_position_embeddings, self.cfg.head_dim, half=True)
        self.rope_sin, self.rope_cos = sin.to(self.rope_sin.device), cos.to(self.rope_cos.device)

    def _init_weights(self, m: nn.Module) -> None:
        std = self.cfg.initializer_range
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                nn.init.zeros_(m.weight[m.padding_idx])
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ):
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.emb_norm(self.tok_emb(input_ids) + self.type_emb(token_type_ids))  # (B, T, E)
        x = self.drop(x)
        if self.emb_proj is not None:
            x = self.emb_proj(x)  # (B, T, hidden)
        sin, cos = self.rope_sin[:T], self.rope_cos[:T]  # (T, head_dim)
        key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True = attend
        q_scale = None
        if self.cfg.entropy_invariant_scale:
            n = attention_mask.sum(-1).clamp(min=16).float()  # (B,)
            q_scale = (torch.log(n) / math.log(512)).view(B, 1, 1, 1)
        hidden = [x]
        for layer in self.layers:
            x = layer(x, key_mask, sin, cos, q_scale)
            hidden.append(x)
        return tuple(hidden) if output_hidden_states else x

    # ----------------------------------------------------------------------------------------
    # Hugging Face checkpoint format
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> "RoFormerEncoder":
        """Load a Hugging Face RoFormer directory (config.json + model.safetensors or pytorch_model.bin).

        ``overrides`` replace config fields (e.g. ``entropy_invariant_scale=True``, dropout rates).
        Keys of known heads (``cls.*`` MLM head, ``pooler.*``) are left for their own loaders.
        """
        cfg, state = read_checkpoint(path)
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        model = cls(cfg)
        model.load_hf_state_dict(state, source=str(path))
        return model

    def load_hf_state_dict(self, state: dict[str, torch.Tensor], *, source: str = "state dict") -> None:
        """Load HF-named weights through the rename table; any missing/unexpected/mis-shaped key raises."""
        own = self.state_dict()
        mapped, unexpected = {}, []
        for hf_key, tensor in state.items():
            if any(hf_key.startswith(p) for p in FOREIGN_PREFIXES):
                continue
            ours = hf_to_ours(hf_key)
            if ours is None or ours not in own:
                unexpected.append(hf_key)
            else:
                mapped[ours] = tensor
        missing = [ours_to_hf(k) for k in own if k not in mapped]
        misshaped = [
            f"{ours_to_hf(k)}: checkpoint {tuple(t.shape)} vs model {tuple(own[k].shape)}"
            for k, t in mapped.items()
            if tuple(t.shape) != tuple(own[k].shape)
        ]
        if missing or unexpected or misshaped:
            raise CheckpointMismatchError(source, missing=missing, unexpected=unexpected, misshaped=misshaped)
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()})

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict under the names ``transformers.RoFormerModel`` uses (incl. its sinusoid table)."""
        out = {ours_to_hf(k): v.detach().contiguous() for k, v in self.state_dict().items()}
        sin, cos = rope_table(self.cfg.max_position_embeddings, self.cfg.head_dim)
        out["encoder.embed_positions.weight"] = torch.cat([sin[:, ::2], cos[:, ::2]], dim=-1)
        return out

    def save_pretrained(self, path: str | Path, *, extra: dict[str, torch.Tensor] | None = None) -> None:
        """Write config.json + model.safetensors loadable by ``transformers.RoFormerModel``.

        ``extra`` adds tensors under their own HF names (e.g. ``pooler.dense.weight``).
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.cfg.to_hf_dict(), indent=2) + "\n", encoding="utf-8")
        tensors = self.hf_state_dict() | {k: v.detach().contiguous() for k, v in (extra or {}).items()}
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------------------------
# Checkpoint key mapping: (HF pattern, our pattern), as data. {i} is a layer index.
# --------------------------------------------------------------------------------------------

RENAMES: list[tuple[str, str]] = [
    ("embeddings.word_embeddings.{p}", "tok_emb.{p}"),
    ("embeddings.token_type_embeddings.{p}", "type_emb.{p}"),
    ("embeddings.LayerNorm.{p}", "emb_norm.{p}"),
    ("embeddings_project.{p}", "emb_proj.{p}"),
    ("encoder.layer.{i}.attention.self.query.{p}", "layers.{i}.attn.query.{p}"),
    ("encoder.layer.{i}.attention.self.key.{p}", "layers.{i}.attn.key.{p}"),
    ("encoder.layer.{i}.attention.self.value.{p}", "layers.{i}.attn.value.{p}"),
    ("encoder.layer.{i}.attention.output.dense.{p}", "layers.{i}.attn.out.{p}"),
    ("encoder.layer.{i}.attention.output.LayerNorm.{p}", "layers.{i}.attn_norm.{p}"),
    ("encoder.layer.{i}.intermediate.dense.{p}", "layers.{i}.ffn.up.{p}"),
    ("encoder.layer.{i}.output.dense.{p}", "layers.{i}.ffn.down.{p}"),
    ("encoder.layer.{i}.output.LayerNorm.{p}", "layers.{i}.ffn_norm.{p}"),
]
# Keys that belong to other parts of a HF checkpoint: the sinusoid table (recomputed), heads.
FOREIGN_PREFIXES = ("encoder.embed_positions.", "cls.", "pooler.")
BASE_PREFIX = "roformer."  # RoFormerFor* checkpoints nest the encoder under this prefix


def _compile(pattern: str) -> re.Pattern:
    rx = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(rx + "$")


_HF_TO_OURS = [(_compile(hf), ours) for hf, ours in RENAMES]
_OURS_TO_HF = [(_compile(ours), hf) for hf, ours in RENAMES]


def _rename(key: str, table) -> str | None:
    for rx, target in table:
        m = rx.match(key)
        if m:
            return target.format(**m.groupdict())
    return None


def hf_to_ours(key: str) -> str | None:
    return _rename(key, _HF_TO_OURS)


def ours_to_hf(key: str) -> str:
    hf = _rename(key, _OURS_TO_HF)
    if hf is None:
        raise KeyError(f"no Hugging Face name for parameter {key!r}")
    return hf


class CheckpointMismatchError(ValueError):
    """A checkpoint does not match the model: lists every missing, unexpected and mis-shaped key."""

    def __init__(self, source: str, *, missing=(), unexpected=(), misshaped=()):
        self.missing, self.unexpected, self.misshaped = list(missing), list(unexpected), list(misshaped)
        parts = [f"checkpoint {source} does not match the model"]
        for name, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
            if keys:
                parts.append(f"{name} ({len(keys)}): " + ", ".join(keys))
        super().__init__("; ".join(parts))


def read_checkpoint(path: str | Path) -> tuple[RoFormerConfig, dict[str, torch.Tensor]]:
    """Config and full state dict (HF names, the ``roformer.`` prefix stripped) of a HF directory."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face RoFormer directory)")
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if raw.get("model_type", "roformer") != "roformer":
        raise ValueError(f"{path}/config.json: model_type is {raw['model_type']!r}, expected 'roformer'")
    cfg = RoFormerConfig.from_dict(raw)
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{path}: neither model.safetensors nor pytorch_model.bin found")
    state = {k.removeprefix(BASE_PREFIX): v for k, v in state.items()}
    return cfg, state
