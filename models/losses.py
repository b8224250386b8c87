"""Sentence-similarity losses: CoSENT, the in-batch softmax contrastive loss, and supervised SimCSE.

Read top to bottom: a stable ``log(1 + sum exp)`` -> CoSENT -> in-batch contrastive -> SimCSE.

CoSENT (Su Jianlin, https://kexue.fm/archives/8847). For pairs ``p`` with cosine ``cos_p`` and
label ``y_p``, every ordered couple of pairs whose labels say "p is more similar than q" adds a term::

    loss = log(1 + sum_{(p, q): y_p > y_q} exp(lambda * (cos_q - cos_p))),  lambda = 20

Only the *order* of the labels matters, so 0/1 paraphrase labels and 0-5 STS scores work alike;
pairs of equal label add nothing. With ``groups``, only pairs of the same group are compared, so
batches that mix files labelled on different scales (LCQMC 0/1 with STS-B 0-5) never compare a
"1" from one with a "3" from the other.

In-batch contrastive (SimCSE supervised / RoFormer-Sim): row ``i`` of ``anchors`` must pick its own
positive ``positives[i]`` among all positives of the batch, by a softmax over
``scale * cos(anchor_i, positive_j)``; the other rows' positives are the negatives.

Supervised SimCSE (Gao et al. 2021, on NLI): the same softmax, with the batch's hard negatives (the
contradiction of a premise) added as candidates for every anchor: ``anchors[i]`` (a premise) must pick
``positives[i]`` (its entailment) among all B positives and all M hard negatives of the batch. Rows
that share their anchor text (a premise with two entailments) do not count each other's positive as
a negative (``same_anchor``).

All take keyword-only arguments and compute in fp32. Excluded terms are ``finfo(fp32).min``
written with a select (never added), as in :mod:`models.global_pointer`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_EXCLUDED = torch.finfo(torch.float32).min


def _log1p_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 + sum(exp(x))) over all of x, stably (a 0 joins the logsumexp)."""
    return torch.logsumexp(torch.cat([x.reshape(-1), x.new_zeros(1)]), dim=0)


def cosent_loss(*, cos: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None,
                scale: float = 20.0) -> torch.Tensor:
    """Scalar CoSENT loss over a batch of N pairs.

    cos: (N,) cosine of each pair; labels: (N,) any ordered scores (0/1, 0-5, floats);
    groups: optional (N,) ints, pairs are compared only within a group. A batch without any
    ordered couple gives 0 (with a graph, so ``backward`` still works).
    """
    if cos.shape != labels.shape or cos.dim() != 1:
        raise ValueError(f"cos and labels must both be (N,), got {tuple(cos.shape)} and {tuple(labels.shape)}")
    s = cos.float() * scale  # (N,)
    diff = s[None, :] - s[:, None]  # (N, N): diff[p, q] = lambda * (cos_q - cos_p)
    y = labels.float()
    ordered = y[:, None] > y[None, :]  # (N, N): pair p is labelled more similar than pair q
    if groups is not None:
        if groups.shape != labels.shape:
            raise ValueError(f"groups must be (N,) like labels, got {tuple(groups.shape)}")
        ordered &= groups[:, None] == groups[None, :]
    return _log1p_sum_exp(diff.masked_fill(~ordered, _EXCLUDED))


def in_batch_contrastive_loss(*, anchors: torch.Tensor, positives: torch.Tensor, scale: float = 20.0,
                              symmetric: bool = False) -> torch.Tensor:
    """Scalar mean cross-entropy of picking ``positives[i]`` for ``anchors[i]`` among all B positives.

    anchors, positives: (B, D) vectors (normalised here: the logits are ``scale`` x cosine).
    ``symmetric`` averages with the other direction (positives picking their anchor).
    """
    if anchors.shape != positives.shape or anchors.dim() != 2:
        raise ValueError(f"anchors and positives must both be (B, D), got {tuple(anchors.shape)} and "
                         f"{tuple(positives.shape)}")
    a = F.normalize(anchors.float(), dim=-1)
    p = F.normalize(positives.float(), dim=-1)
    logits = scale * (a @ p.T)  # (B, B): [i, j] = scale * cos(anchor_i, positive_j)
    target = torch.arange(len(a), device=a.device)  # (B,): the diagonal
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = (loss + F.cross_entropy(logits.T, target)) / 2
    return loss


def simcse_loss(*, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                same_anchor: torch.Tensor | None = None, scale: float = 20.0) -> torch.Tensor:
    """Scalar mean cross-entropy of picking ``positives[i]`` for ``anchors[i]`` among all B positives and
    all M hard ``negatives`` of the batch (supervised SimCSE; ``scale`` = 1 / temperature).

    anchors, positives: (B, D); negatives: (M, D) or None (M may be 0); same_anchor: optional (B, B) bool,
    True at [i, j] when rows i and j have the same anchor: positives[j] is then no candidate for row
    i (j != i). Vectors are normalised here: the logits are ``scale`` x cosine.
    """
    if anchors.shape != positives.shape or anchors.dim() != 2:
        raise ValueError(f"anchors and positives must both be (B, D), got {tuple(anchors.shape)} and "
                         f"{tuple(positives.shape)}")
    B = len(anchors)
    with torch.autocast(anchors.device.type, enabled=False):  # fp32 logits under bf16 autocast too
        a = F.normalize(anchors.float(), dim=-1)
        logits = scale * (a @ F.normalize(positives.float(), dim=-1).T)  # (B, B): [i, j] = scale * cos(a_i, p_j)
        if same_anchor is not None:
            if same_anchor.shape != (B, B):
                raise ValueError(f"same_anchor must be ({B}, {B}), got {tuple(same_anchor.shape)}")
            eye = torch.eye(B, dtype=torch.bool, device=a.device)
            logits = logits.masked_fill(same_anchor.to(a.device) & ~eye, _EXCLUDED)
        if negatives is not None and len(negatives):
            if negatives.dim() != 2 or negatives.shape[1] != anchors.shape[1]:
                raise ValueError(f"negatives must be (M, {anchors.shape[1]}), got {tuple(negatives.shape)}")
            hard = scale * (a @ F.normalize(negatives.float(), dim=-1).T)  # (B, M)
            logits = torch.cat([logits, hard], dim=1)  # (B, B + M)
    target = torch.arange(B, device=a.device)  # (B,): the diagonal
    return F.cross_entropy(logits, target)
