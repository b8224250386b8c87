"""BERT-whitening: identity covariance, leading directions, streaming statistics, torch stage, files."""

import math

import numpy as np
import pytest
import torch

from models.whitening import CovarianceAccumulator, Whitening, apply_whitening, fit_whitening, jl_dimension

N, D = 5000, 16


def correlated(seed: int = 0, n: int = N) -> np.ndarray:
    """Rows x = z A + m: correlated, anisotropic, with an offset mean."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(D, D))
    m = rng.normal(size=D) * 5
    return rng.normal(size=(n, D)) @ A + m


def test_whitened_covariance_is_identity():
    x = correlated()
    mu, W = fit_whitening(x)
    y = apply_whitening(x, mu, W)
    assert y.shape == (N, D)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-8)
    np.testing.assert_allclose(np.cov(y.T), np.eye(D), atol=1e-3)
    assert np.abs(np.cov(x.T) - np.eye(D)).max() > 1  # the input was far from white


def test_top_k_keeps_the_leading_directions():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(D, D)))  # known orthonormal principal directions
    std = np.array([16.0, 8.0, 4.0, 2.0] + [0.5] * (D - 4))
    x = (rng.normal(size=(20000, D)) * std) @ Q.T + 3.0
    mu, W = fit_whitening(x)
    k = 4
    U = W[:, :k] / np.linalg.norm(W[:, :k], axis=0)  # unit directions, in order
    np.testing.assert_allclose(np.abs(U.T @ Q[:, :k]), np.eye(k), atol=0.02)
    np.testing.assert_allclose(1 / np.linalg.norm(W[:, :k], axis=0), std[:k], rtol=0.03)  # scales = 1/std
    y = apply_whitening(x, mu, W, k)
    assert y.shape == (20000, k)
    np.testing.assert_allclose(np.cov(y.T), np.eye(k), atol=1e-3)


def test_streaming_accumulator_equals_one_shot_statistics():
    x = correlated(seed=2) + 1e4  # a large mean: naive sum(x x^T) - N mu mu^T is off by ~1e-6 here
    sizes = [1, 0, 999, 7, 1500, 2493]
    assert sum(sizes) == N
    acc = CovarianceAccumulator()
    start = 0
    for size in sizes:
        acc.update(x[start : start + size])
        start += size
    assert acc.count == N
    np.testing.assert_allclose(acc.mean, x.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(acc.covariance, np.cov(x.T), rtol=0, atol=1e-10)  # unbiased, N - 1

    left, right = CovarianceAccumulator().update(x[:1234]), CovarianceAccumulator().update(x[1234:])
    merged = left.merge(right).merge(CovarianceAccumulator())
    np.testing.assert_allclose(merged.covariance, np.cov(x.T), rtol=0, atol=1e-10)
    mu1, W1 = fit_whitening(acc)
    mu2, W2 = fit_whitening(x)
    np.testing.assert_allclose(np.abs(W1), np.abs(W2), atol=1e-8)  # SVD signs may differ


def test_accumulator_errors():
    acc = CovarianceAccumulator()
    with pytest.raises(ValueError, match="no vectors"):
        acc.mean
    acc.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        acc.covariance
    with pytest.raises(ValueError, match="dimension 4 added to an accumulator of dimension 3"):
        acc.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        acc.update(np.ones(3))


@pytest.mark.parametrize("k", [None, 5])
def test_torch_whitening_equals_numpy_reference(k):
    x = correlated(seed=3)
    mu, W = fit_whitening(x)
    module = Whitening(mu, W, k)
    assert (module.in_dim, module.out_dim) == (D, k or D)
    got = module(torch.from_numpy(x[:64]).float())
    want = apply_whitening(x[:64], mu, W, k)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="k must be in"):
        Whitening(mu, W, D + 1)


def test_save_load_round_trip(tmp_path):
    x = correlated(seed=4)
    module = Whitening(*fit_whitening(x), k=6)
    module.save(tmp_path / "whitening.safetensors")
    loaded = Whitening.load(tmp_path / "whitening.safetensors")
    assert torch.equal(loaded.kernel, module.kernel) and torch.equal(loaded.bias, module.bias)
    inp = torch.from_numpy(x[:8]).float()
    torch.testing.assert_close(loaded(inp), module(inp), rtol=0, atol=0)
    assert set(loaded.state_dict()) == {"kernel", "bias"}

    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a whitening file"):
        Whitening.load(tmp_path / "other.safetensors")


def test_jl_dimension():
    assert jl_dimension(10_000) == math.floor(8.33 * math.log(10_000)) + 1 == 77
    assert jl_dimension(1_000_000) == 116
    assert jl_dimension(1) == 1
    assert jl_dimension(10**9, max_dim=128) == 128
    with pytest.raises(ValueError):
        jl_dimension(0)


def test_first_d_dimensions_renormalised_are_whitening_with_k_d():
    """The claim behind /v1/embeddings' ``dimensions``: the similarity head ends in
    ``l2_normalize(whitening(x))``, whitening's columns are ordered by decreasing variance, so the first d
    outputs of the full-k head, re-normalised, are the head fitted with k = d (fp32, through the torch
    stage that exports as one MatMul + Add, and through the service's own ``shorten``)."""
    from models.pooling import l2_normalize
    from service.http.openai import shorten

    x = correlated(seed=3)
    mu, W = fit_whitening(x)
    s = np.linalg.svd(np.cov(x.T), compute_uv=False)
    assert np.all(np.diff(s) <= 0)  # variances decrease along W's columns
    pooled = torch.from_numpy(correlated(seed=4, n=64)).float()  # (64, D) unseen vectors
    full = l2_normalize(Whitening(mu, W)(pooled)).numpy()  # (64, D): what the graph outputs
    for d in (1, 3, 8, D):
        want = l2_normalize(Whitening(mu, W, k=d)(pooled)).numpy()  # (64, d)
        np.testing.assert_allclose(shorten(full, d), want, rtol=0, atol=2e-6)
        np.testing.assert_allclose(np.linalg.norm(shorten(full, d), axis=1), 1.0, atol=1e-6)
    # so a query's candidates rank the same by the shortened vectors as by whitening with k = d
    short, k4 = shorten(full, 4), l2_normalize(Whitening(mu, W, k=4)(pooled)).numpy()
    np.testing.assert_array_equal(np.argsort(-(short[1:] @ short[0])), np.argsort(-(k4[1:] @ k4[0])))
