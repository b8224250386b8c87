"""BERT-whitening (Su Jianlin, https://kexue.fm/archives/8069): y = (x - mu) W[:, :k].

Read top to bottom: CovarianceAccumulator (streaming mean/covariance, float64) -> fit_whitening
(SVD of the covariance) -> jl_dimension (a starting k) -> apply_whitening (numpy reference) ->
Whitening (the torch stage, folded to one MatMul + Add, saved as safetensors).

Covariance is the *unbiased* sample covariance (divide by N - 1) everywhere, as ``np.cov`` and
Su's ``compute_kernel_bias``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class CovarianceAccumulator:
    """Streaming count, mean and centred scatter matrix M2 = sum (x - mean)(x - mean)^T, float64.

    Memory is O(D^2) whatever the corpus size. Batches are combined with Chan et al.'s pairwise
    update, which equals one pass over all rows but, unlike keeping sum(x) and sum(x x^T), does not
    lose digits to cancellation when the mean is large against the spread (as for BERT vectors).
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.count = 0
        self._mean: np.ndarray | None = None  # (D,)
        self._m2: np.ndarray | None = None  # (D, D)

    def update(self, batch: np.ndarray) -> "CovarianceAccumulator":
        """Add the rows of batch (N, D)."""
        x = np.asarray(batch, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected a batch of vectors (N, D), got shape {x.shape}")
        if len(x) == 0:
            return self
        mean = x.mean(axis=0)  # (D,)
        centred = x - mean  # (N, D)
        return self._combine(len(x), mean, centred.T @ centred)  # M2: (D, D)

    def merge(self, other: "CovarianceAccumulator") -> "CovarianceAccumulator":
        """Fold another accumulator (e.g. from another worker or shard) into this one."""
        if other.count:
            self._combine(other.count, other._mean, other._m2)
        return self

    def _combine(self, n: int, mean: np.ndarray, m2: np.ndarray) -> "CovarianceAccumulator":
        if self.dim is None:
            self.dim = mean.shape[0]
        if mean.shape != (self.dim,):
            raise ValueError(
                f"vectors of dimension {mean.shape[0]} added to an accumulator of dimension {self.dim}"
            )
        if self.count == 0:
            self.count, self._mean, self._m2 = n, mean.copy(), m2.copy()
            return self
        total = self.count + n
        delta = mean - self._mean  # (D,)
        self._m2 += m2 + np.outer(delta, delta) * (self.count * n / total)  # (D, D)
        self._mean += delta * (n / total)
        self.count = total
        return self

    @property
    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no vectors accumulated")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased sample covariance (D, D): M2 / (N - 1)."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 vectors, got {self.count}")
        return self._m2 / (self.count - 1)


def fit_whitening(
    data: CovarianceAccumulator | np.ndarray, *, eps: float = 1e-8
) -> tuple[np.ndarray, np.ndarray]:
    """(mu (D,), W (D, D)), float64: cov = U diag(s) U^T, W = U diag(1 / sqrt(s + eps)).

    Columns of W are ordered by decreasing variance s, so W[:, :k] keeps the k leading directions.
    ``eps`` only keeps directions of (near) zero variance finite.
    """
    acc = data if isinstance(data, CovarianceAccumulator) else CovarianceAccumulator().update(data)
    if acc.count <= acc.dim:
        log.warning("whitening fitted on %d vectors of dimension %d: singular covariance", acc.count, acc.dim)
    u, s, _ = np.linalg.svd(acc.covariance)  # s decreasing
    W = u / np.sqrt(s + eps)  # (D, D): column i scaled by 1/sqrt(s_i)
    return acc.mean, W


def jl_dimension(n_sentences: int, *, max_dim: int | None = None) -> int:
    """Smallest integer k > 8.33 ln N (the Johnson-Lindenstrauss estimate Su uses for how many
    dimensions N vectors need), optionally capped at max_dim. A starting point for k, not a rule."""
    if n_sentences < 1:
        raise ValueError(f"n_sentences must be >= 1, got {n_sentences}")
    k = math.floor(8.33 * math.log(n_sentences)) + 1
    return min(k, max_dim) if max_dim is not None else k


def apply_whitening(x: np.ndarray, mu: np.ndarray, W: np.ndarray, k: int | None = None) -> np.ndarray:
    """Numpy reference: (x - mu) @ W[:, :k] -> (N, k)."""
    return (np.asarray(x, dtype=np.float64) - mu) @ W[:, :k]


class Whitening(nn.Module):
    """y = x @ kernel + bias, kernel = W[:, :k] (D, k), bias = -mu @ W[:, :k] (k,): fp32 buffers.

    The affine form exports as one MatMul + Add. ``save``/``load`` use safetensors (tensors
    ``kernel`` and ``bias``, fp32).
    """

    FORMAT = "ropenlp.whitening"

    def __init__(self, mu, W, k: int | None = None):
        super().__init__()
        mu, W = np.asarray(mu, dtype=np.float64), np.asarray(W, dtype=np.float64)
        if W.ndim != 2 or mu.shape != (W.shape[0],):
            raise ValueError(f"mu {mu.shape} and W {W.shape} do not fit: expected (D,) and (D, K)")
        k = W.shape[1] if k is None else k
        if not 1 <= k <= W.shape[1]:
            raise ValueError(f"k must be in [1, {W.shape[1]}], got {k}")
        kernel = W[:, :k]  # (D, k)
        self.register_buffer("kernel", torch.from_numpy(kernel).float())
        self.register_buffer("bias", torch.from_numpy(-mu @ kernel).float())  # (k,)

    @property
    def in_dim(self) -> int:
        return self.kernel.shape[0]

    @property
    def out_dim(self) -> int:
        return self.kernel.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.kernel + self.bias  # (B, k)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {"kernel": self.kernel.float().contiguous(), "bias": self.bias.float().contiguous()}
        save_file(tensors, str(path), metadata={"format": self.FORMAT, "version": "1"})

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta, keys = f.metadata() or {}, set(f.keys())
            if meta.get("format") != cls.FORMAT or keys != {"kernel", "bias"}:
                raise ValueError(
                    f"{path}: not a whitening file (format {meta.get('format')!r}, tensors {sorted(keys)})"
                )
            kernel, bias = f.get_tensor("kernel"), f.get_tensor("bias")
        if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
            raise ValueError(f"{path}: kernel {tuple(kernel.shape)} and bias {tuple(bias.shape)} do not fit")
        module = cls(np.zeros(kernel.shape[0]), kernel.double().numpy())
        module.bias.copy_(bias)
        return module
