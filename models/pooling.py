"""Sentence pooling over encoder hidden states, and L2 normalisation.

Modes (one closed registry, ``POOLING_MODES``):

* ``cls``            last layer, token 0 ([CLS]).
* ``mean``           last layer, mean over real tokens (padding masked).
* ``first-last-avg`` mean of the masked means of the first transformer layer (hidden_states[1];
                     [0] is the embedding output) and of the last layer, as in Su's BERT-whitening.
* ``linear``         RoFormer-Sim: ``Linear(hidden, hidden)`` on [CLS], no activation (bert4keras
                     ``with_pool='linear'``); weights from a HF checkpoint's ``pooler.dense.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from models.roformer import BASE_PREFIX, CheckpointMismatchError

log = logging.getLogger(__name__)

PoolingMode = Literal["cls", "mean", "first-last-avg", "linear"]
POOLING_MODES: tuple[str, ...] = get_args(PoolingMode)
HF_POOLER = {"weight": "pooler.dense.weight", "bias": "pooler.dense.bias"}  # ours -> HF name


def masked_mean(x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T, H) over the tokens where attention_mask (B, T) is 1; sums in fp32."""
    m = attention_mask.to(torch.float32)[..., None]  # (B, T, 1)
    total = (x.float() * m).sum(dim=1)  # (B, H)
    count = m.sum(dim=1).clamp(min=1.0)  # (B, 1): an all-padding row gives 0, not NaN
    return (total / count).to(x.dtype)


def _cls(hs: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    return hs[-1][:, 0]  # (B, H)


def _mean(hs: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(hs[-1], attention_mask)  # (B, H)


def _first_last_avg(hs: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    return (masked_mean(hs[1], attention_mask) + masked_mean(hs[-1], attention_mask)) / 2  # (B, H)


_POOL = {"cls": _cls, "mean": _mean, "first-last-avg": _first_last_avg, "linear": _cls}  # keys: POOLING_MODES


class Pooling(nn.Module):
    """``forward(hidden_states, attention_mask) -> (B, H)``.

    hidden_states: the last layer (B, T, H), or the tuple of all hidden states (embedding output
    first, as ``RoFormerEncoder(..., output_hidden_states=True)`` returns); ``first-last-avg``
    needs the tuple (see ``needs_hidden_states``).
    """

    def __init__(self, mode: PoolingMode, hidden_size: int):
        super().__init__()
        if mode not in _POOL:
            raise ValueError(f"unknown pooling mode {mode!r}; choose from {list(POOLING_MODES)}")
        self.mode, self.hidden_size = mode, hidden_size
        self.dense = nn.Linear(hidden_size, hidden_size) if mode == "linear" else None

    @property
    def needs_hidden_states(self) -> bool:
        return self.mode == "first-last-avg"

    def forward(self, hidden_states: tuple[torch.Tensor, ...] | torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        if isinstance(hidden_states, torch.Tensor):
            if self.needs_hidden_states:
                raise ValueError(f"pooling {self.mode!r} needs all hidden states (output_hidden_states=True)")
            hidden_states = (hidden_states,)
        elif self.needs_hidden_states and len(hidden_states) < 2:
            raise ValueError(f"pooling {self.mode!r} needs the embedding output and at least one layer")
        x = _POOL[self.mode](hidden_states, attention_mask)  # (B, H)
        return self.dense(x) if self.dense is not None else x

    def load_hf_state_dict(self, state: dict[str, torch.Tensor], *, source: str = "state dict") -> None:
        """Load ``pooler.dense.{weight,bias}`` from a full HF state dict (other keys ignored).

        Only the ``linear`` mode has weights; for the others this does nothing.
        """
        if self.dense is None:
            return
        state = {k.removeprefix(BASE_PREFIX): v for k, v in state.items()}
        own = self.dense.state_dict()
        missing = [hf for hf in HF_POOLER.values() if hf not in state]
        misshaped = [
            f"{hf}: checkpoint {tuple(state[hf].shape)} vs model {tuple(own[ours].shape)}"
            for ours, hf in HF_POOLER.items()
            if hf in state and tuple(state[hf].shape) != tuple(own[ours].shape)
        ]
        if missing or misshaped:
            raise CheckpointMismatchError(source, missing=missing, misshaped=misshaped)
        self.dense.load_state_dict({ours: state[hf].to(own[ours].dtype) for ours, hf in HF_POOLER.items()})
        log.debug("loaded linear pooler from %s", source)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The pooler's weights under their HF names (empty unless mode is ``linear``)."""
        if self.dense is None:
            return {}
        return {hf: getattr(self.dense, ours).detach().contiguous() for ours, hf in HF_POOLER.items()}


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / max(||x||, eps) along the last axis (a zero vector stays zero)."""
    return F.normalize(x, p=2.0, dim=-1, eps=eps)
