"""GlobalPointer span heads and their loss (Su Jianlin, https://kexue.fm/archives/8373, /8877).

Read top to bottom: span masking -> GlobalPointer -> EfficientGlobalPointer -> HEADS registry ->
multilabel categorical cross-entropy (dense and sparse) -> the GlobalPointer losses.

A head maps hidden states (B, T, H) to span scores (B, C, T, T): scores[b, c, i, j] is the logit that
tokens i..j (inclusive) form an entity of type c. Decoding keeps every span with score > 0.

Masking. Spans with j < i or touching padding get ``torch.finfo(dtype).min`` (-65504 in fp16,
-3.4e38 in fp32): finite in every dtype, exp() of it is exactly 0 (a certain negative in the loss),
and far below any decoding threshold. It is written once, with a select (``masked_fill``), never
added to a score, so padding + triangle overlaps cannot overflow to -inf the way additive masks or
Su's ``- 1e12`` (inf in fp16) do. The losses below run in fp32 and only ever select, negate or
logsumexp masked values, never add a constant to them, so they stay finite too. Consumers must not
add offsets to masked scores either (compare, select, or sigmoid them instead).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import nn

from models.roformer import apply_rope, half_layout, permute_outputs_, rope_table

log = logging.getLogger(__name__)


def mask_spans(scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Set spans with j < i or an end on padding to finfo(dtype).min. scores (B, C, T, T)."""
    T = scores.shape[-1]
    keep = attention_mask.bool()  # (B, T)
    keep = keep[:, None, :, None] & keep[:, None, None, :]  # (B, 1, T, T): both ends are real tokens
    pos = torch.arange(T, device=scores.device)  # (T,)
    upper = pos[:, None] <= pos[None, :]  # (T, T): j >= i
    return scores.masked_fill(~(keep & upper), torch.finfo(scores.dtype).min)


def _register_rope(module: nn.Module, head_size: int, max_len: int, *, half: bool = False) -> None:
    """RoPE tables as non-persistent buffers (checkpoints hold no tables): rope_sin, rope_cos (L, D)."""
    sin, cos = rope_table(max_len, head_size, half=half)
    module.register_buffer("rope_sin", sin, persistent=False)
    module.register_buffer("rope_cos", cos, persistent=False)


class GlobalPointer(nn.Module):
    """Per-type q/k: s_c(i, j) = <R_i q_{c,i}, R_j k_{c,j}> / sqrt(head_size), spans j >= i.

    One Linear hidden -> num_types * 2 * head_size; per type the first head_size channels are q,
    the next head_size are k (bert4keras ``GlobalPointer`` layout, so its weights port unchanged).
    """

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, *, max_len: int = 512,
                 rope: bool = True):
        super().__init__()
        self.num_types, self.head_size = num_types, head_size
        self.dense = nn.Linear(hidden_size, num_types * head_size * 2)
        self.rope, self.rope_half = rope, False
        if rope:
            _register_rope(self, head_size, max_len)

    def half_rope_(self) -> None:
        """models.roformer.use_half_rope_: q and k channels of every type in the rotate-half layout."""
        if not self.rope or self.rope_half:
            return
        D, half = self.head_size, half_layout(self.head_size)
        within = torch.cat([half, D + half])  # q, then k, of one type
        permute_outputs_(self.dense, (torch.arange(self.num_types)[:, None] * 2 * D + within).flatten())
        _register_rope(self, D, self.rope_sin.shape[0], half=True)
        self.rope_half = True

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        T, D = hidden.shape[1], self.head_size
        x = self.dense(hidden).unflatten(-1, (self.num_types, 2 * D)).transpose(1, 2)  # (B, C, T, 2D)
        q, k = x[..., :D], x[..., D:]  # (B, C, T, D) each
        if self.rope:
            sin, cos = self.rope_sin[:T], self.rope_cos[:T]  # (T, D): positions 0..T-1
            q, k = apply_rope(q, sin, cos, half=self.rope_half), apply_rope(k, sin, cos, half=self.rope_half)
        q = q * D**-0.5  # scale before the product: smaller intermediates in fp16
        scores = torch.einsum("bcmd,bcnd->bcmn", q, k)  # (B, C, T, T)
        return mask_spans(scores, attention_mask)


class EfficientGlobalPointer(nn.Module):
    """Shared q/k plus a per-type start/end bias (https://kexue.fm/archives/8877).

    As in Su's bert4keras ``EfficientGlobalPointer``::

        p = Dense(2 * head_size)(h);  q, k = p[..., ::2], p[..., 1::2]     # interleaved q/k
        bias = Dense(2 * heads)(p) / 2                                      # on p, not on h
        logits = qk[:, None] + bias[..., ::2] (end j) + bias[..., 1::2] (start i)

    i.e. s_c(i, j) = q_i.k_j / sqrt(d) + (w_{2c}.p_j + w_{2c+1}.p_i + b_{2c} + b_{2c+1}) / 2, the
    paper's w_c^T [q_i; k_i; q_j; k_j] with the un-rotated projections. The bias layer reads the
    2*head_size projection p (Su's code), not the hidden states as some PyTorch ports do.
    """

    def __init__(self, hidden_size: int, num_types: int, head_size: int = 64, *, max_len: int = 512,
                 rope: bool = True):
        super().__init__()
        self.num_types, self.head_size = num_types, head_size
        self.dense = nn.Linear(hidden_size, 2 * head_size)  # Su's p_dense
        self.bias = nn.Linear(2 * head_size, 2 * num_types)  # Su's q_dense
        self.rope, self.rope_half = rope, False
        if rope:
            _register_rope(self, head_size, max_len)

    def half_rope_(self) -> None:
        """models.roformer.use_half_rope_: p = [q | k], each in the rotate-half layout, instead of q and k
        interleaved, and the bias layer's outputs [end | start] instead of interleaved (no step-2 slices);
        the bias layer reads p's channels in their new places."""
        if self.rope_half:
            return
        pairs = 2 * half_layout(self.head_size)  # q's channels of p (even), in the rotate-half order
        order = torch.cat([pairs, pairs + 1])  # then k's (odd)
        permute_outputs_(self.dense, order)
        self.bias.weight.data = self.bias.weight.data[:, order].contiguous()
        permute_outputs_(self.bias, half_layout(2 * self.num_types))  # [end biases | start biases]
        if self.rope:
            _register_rope(self, self.head_size, self.rope_sin.shape[0], half=True)
        self.rope_half = True

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        T = hidden.shape[1]
        p = self.dense(hidden)  # (B, T, 2D)
        D = self.head_size
        q, k = (p[..., :D], p[..., D:]) if self.rope_half else (p[..., ::2], p[..., 1::2])  # (B, T, D) each
        if self.rope:
            sin, cos = self.rope_sin[:T], self.rope_cos[:T]  # (T, D): positions 0..T-1
            q, k = apply_rope(q, sin, cos, half=self.rope_half), apply_rope(k, sin, cos, half=self.rope_half)
        q = q * self.head_size**-0.5
        qk = torch.einsum("bmd,bnd->bmn", q, k)  # (B, T, T)
        bias = self.bias(p).transpose(1, 2) / 2  # (B, 2C, T)
        C = self.num_types
        end, start = (bias[:, :C], bias[:, C:]) if self.rope_half else (bias[:, ::2], bias[:, 1::2])  # (B, C, T)
        end, start = end[:, :, None, :], start[:, :, :, None]  # (B, C, 1, T), (B, C, T, 1)
        scores = qk[:, None] + end + start  # (B, C, T, T)
        return mask_spans(scores, attention_mask)


HeadKind = Literal["gp", "egp"]
HEADS: dict[str, type[nn.Module]] = {"gp": GlobalPointer, "egp": EfficientGlobalPointer}


# --------------------------------------------------------------------------------------------
# Loss: multilabel categorical cross-entropy (https://kexue.fm/archives/7359)
#     loss = log(1 + sum_{neg} e^{s}) + log(1 + sum_{pos} e^{-s})
# Computed in fp32 with selects + logsumexp; excluded entries are finfo(fp32).min, never +-1e12.
# --------------------------------------------------------------------------------------------

_EXCLUDED = torch.finfo(torch.float32).min


def _log1p_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 + sum(exp(x), -1)) stably: logsumexp over x with a 0 appended."""
    zero = x.new_zeros(x.shape[:-1] + (1,))  # (..., 1)
    return torch.logsumexp(torch.cat([x, zero], dim=-1), dim=-1)  # (...,)


def multilabel_categorical_crossentropy(*, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row loss (...,) for logits and 0/1 targets (..., N); computed in fp32."""
    s = logits.float()
    pos = targets.bool()
    neg_term = _log1p_sum_exp(s.masked_fill(pos, _EXCLUDED))  # (...,)
    pos_term = _log1p_sum_exp((-s).masked_fill(~pos, _EXCLUDED))  # (...,)
    return neg_term + pos_term


def sparse_multilabel_categorical_crossentropy(
    *, logits: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Per-row loss (...,) with the positives given as indices (..., K) into the last axis of logits
    (..., N), padded with -1; indices must be distinct within a row. Same value as the dense loss.

    Su's version gets the negative term as log(1 + sum_all - sum_pos) through log(1 - e^{aux}),
    which cancels catastrophically once the positives dominate (clipped at 1e-7: wrong late in
    training). Here the positives are knocked out of a copy of the row with ``scatter`` instead:
    exact, and still no dense target tensor.
    """
    s = logits.float()
    N = s.shape[-1]
    valid = positives >= 0  # (..., K)
    idx = torch.where(valid, positives, torch.full_like(positives, N))  # (..., K): padding -> slot N
    ext = torch.cat([s, s.new_full(s.shape[:-1] + (1,), _EXCLUDED)], dim=-1)  # (..., N + 1)
    s_pos = ext.gather(-1, idx)  # (..., K): padding reads the excluded slot
    pos_term = _log1p_sum_exp((-s_pos).masked_fill(~valid, _EXCLUDED))  # (...,)
    neg_term = _log1p_sum_exp(ext.scatter(-1, idx, _EXCLUDED))  # (...,): positives removed
    return neg_term + pos_term


def global_pointer_loss(*, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Scalar: mean over the B*C rows of the MCCE over all T*T spans. scores, targets (B, C, T, T)."""
    logits, targets = scores.flatten(-2), targets.flatten(-2)  # (B, C, T*T)
    return multilabel_categorical_crossentropy(logits=logits, targets=targets).mean()  # mean of (B, C)


def sparse_global_pointer_loss(*, scores: torch.Tensor, spans: torch.Tensor) -> torch.Tensor:
    """Same value as ``global_pointer_loss`` from positive spans only.

    spans: LongTensor (B, C, K), the flattened index i * T + j of each gold span (i..j) of type c,
    padded with -1. Note Su's ``sparse_global_pointer_crossentropy`` sums over types and averages
    over the batch (C times this value); here both losses use the same mean over B*C rows.
    """
    logits = scores.flatten(-2)  # (B, C, T*T)
    return sparse_multilabel_categorical_crossentropy(logits=logits, positives=spans).mean()  # mean of (B, C)
