"""Task checkpoints: save -> load round trips, HF compatibility of the encoder part, torch-free core."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.roformer import RoFormerConfig, RoFormerEncoder
from models.tasks import (
    NerConfig,
    NerModel,
    SimilarityConfig,
    SimilarityModel,
    load_ner,
    load_similarity,
    read_task,
)
from models.whitening import Whitening, fit_whitening

REPO = Path(__file__).resolve().parents[2]
CFG = RoFormerConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)


def batch():
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 20, 21, 22, 23, 24, 3]])
    return ids, (ids > 0).long()


@pytest.mark.parametrize("head", ["gp", "egp"])
def test_ner_round_trip(tmp_path, tiny_vocab, head):
    torch.manual_seed(0)
    model = NerModel(RoFormerEncoder(CFG), NerConfig(labels=("LOC", "ORG"), head=head, head_size=16)).eval()
    model.save(tmp_path, tokenizer_from=tiny_vocab)
    assert read_task(tmp_path)["labels"] == ["LOC", "ORG"]
    assert (tmp_path / "vocab.txt").read_text() == tiny_vocab.read_text()
    again = load_ner(tmp_path).eval()
    ids, mask = batch()
    with torch.no_grad():
        a, loss = model(ids, mask)
        b, _ = again(ids, mask)
    assert loss is None
    assert torch.equal(a, b)
    assert again.cfg == model.cfg


def test_ner_loss_dense_equals_sparse():
    torch.manual_seed(0)
    model = NerModel(RoFormerEncoder(CFG), NerConfig(labels=("A", "B"), head_size=16)).eval()
    ids, mask = batch()
    T = ids.shape[1]
    dense = torch.zeros(2, 2, T, T)
    dense[0, 0, 1, 2] = dense[1, 1, 2, 5] = dense[1, 0, 3, 3] = 1
    sparse = torch.full((2, 2, 2), -1, dtype=torch.long)
    sparse[0, 0, 0] = 1 * T + 2
    sparse[1, 1, 0] = 2 * T + 5
    sparse[1, 0, 0] = 3 * T + 3
    with torch.no_grad():
        _, l_dense = model(ids, mask, targets=dense)
        _, l_sparse = model(ids, mask, targets=sparse)
    assert l_dense.item() == pytest.approx(l_sparse.item(), rel=1e-5)


def test_ner_config_is_checked():
    with pytest.raises(ValueError, match="labels"):
        NerConfig(labels=())
    with pytest.raises(ValueError, match="stride"):
        NerConfig(labels=("A",), max_length=16, stride=15)
    with pytest.raises(ValueError, match=r"NerConfig.decode must be one of \['nested', 'flat'\], got 'bog"):
        NerConfig(labels=("A",), decode="bogus")


def test_ner_decode_is_saved_and_old_checkpoints_load_as_nested(tmp_path, tiny_vocab):
    torch.manual_seed(0)
    cfg = NerConfig(labels=("LOC",), head_size=16, threshold=-1.0, decode="flat")
    NerModel(RoFormerEncoder(CFG), cfg).save(tmp_path, tokenizer_from=tiny_vocab)
    assert read_task(tmp_path)["decode"] == "flat"
    assert load_ner(tmp_path).cfg == cfg
    meta = read_task(tmp_path)
    del meta["decode"]  # ropenlp.json as written before the field existed
    (tmp_path / "ropenlp.json").write_text(json.dumps(meta))
    assert load_ner(tmp_path).cfg.decode == "nested" and load_ner(tmp_path).cfg.threshold == -1.0


def test_similarity_round_trip_with_whitening(tmp_path, tiny_vocab):
    torch.manual_seed(0)
    model = SimilarityModel(RoFormerEncoder(CFG), SimilarityConfig(pooling="linear")).eval()
    ids, mask = batch()
    with torch.no_grad():
        pooled = model.pooled(ids, mask).numpy()
    rng = np.random.default_rng(0)
    mu, W = fit_whitening(rng.normal(size=(200, 32)) + pooled.mean(0))
    model.whitening = Whitening(mu, W, k=8)
    model.save(tmp_path, tokenizer_from=tiny_vocab)
    again = load_similarity(tmp_path).eval()
    with torch.no_grad():
        a, _ = model(ids, mask)
        b, _ = again(ids, mask)
    assert a.shape == (2, 8) and again.dim == 8
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_similarity_from_plain_hf_checkpoint_picks_linear_pooler(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    enc = RoFormerEncoder(CFG)
    pooler = {"pooler.dense.weight": torch.randn(32, 32), "pooler.dense.bias": torch.randn(32)}
    enc.save_pretrained(tmp_path, extra=pooler)
    model = load_similarity(tmp_path)
    assert model.cfg.pooling == "linear"
    assert torch.equal(model.pooling.hf_state_dict()["pooler.dense.weight"], pooler["pooler.dense.weight"])
    transformers.RoFormerModel.from_pretrained(tmp_path)  # still a valid HF checkpoint


def test_wrong_task_is_named(tmp_path, tiny_vocab):
    SimilarityModel(RoFormerEncoder(CFG), SimilarityConfig()).save(tmp_path, tokenizer_from=tiny_vocab)
    with pytest.raises(ValueError, match="not an NER checkpoint"):
        load_ner(tmp_path)


def test_torch_free_modules_do_not_import_torch():
    code = ("import sys, service, models, models.text, models.spans, models.bundle; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
