"""Released encoders: a Hugging Face RoFormer folder in fp16 that transformers loads, that fine-tuning
and a further pre-training stage start from; and the encoder committed in the repository."""

import json
from pathlib import Path

import pytest
import torch

from models.roformer import RoFormerConfig, RoFormerEncoder
from training.electra import GENERATOR_DIR, ElectraConfig, RoFormerForElectra
from training.release import RECORD_FILE, release_encoder

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = sorted(p.parent for p in (ROOT / "encoders").glob("*/encoder.json"))
TINY = {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}
GEN = ElectraConfig(generator_hidden=16, generator_heads=1, generator_intermediate=32)


@pytest.fixture()
def electra_run(tmp_path):
    torch.manual_seed(0)
    model = RoFormerForElectra.build(RoFormerEncoder(RoFormerConfig(**TINY)), GEN)
    (tmp_path / "run").mkdir()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij"]) + "\n")
    model.save_pretrained(tmp_path / "run" / "model", tokenizer_file=vocab)
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({
        "step": 7, "last_eval": {"disc_loss": 0.3}, "data": {"read": "2 file(s)", "train_tokens": 1000},
        "config": {"mlm": {"objective": "electra", "whole_word": False}, "model": {"init": ""}}}))
    return model, tmp_path / "run" / "model"


def test_release_is_fp16_and_loads_everywhere(electra_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    model, src = electra_run
    record = release_encoder(src, tmp_path / "rel", name="tiny", data_terms="test data only")
    out = tmp_path / "rel"
    assert record["objective"] == "electra" and record["steps"] == 7 and record["dtype"] == "fp16"
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(out / "model.safetensors").values()} == {torch.float16}
    assert (out / "vocab.txt").is_file() and (out / GENERATOR_DIR / "model.safetensors").is_file()
    assert "tiny" in (out / "README.md").read_text() and json.loads((out / RECORD_FILE).read_text())["name"] == "tiny"
    ids = torch.randint(5, 15, (2, 9))
    hf = transformers.RoFormerModel.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        ours = model.encoder.eval()(ids, torch.ones_like(ids))
    assert (theirs - ours).abs().max().item() < 2e-2  # fp16 weights
    again = RoFormerForElectra.from_pretrained(out, GEN)  # a further stage: generator and head come back
    assert torch.allclose(again.generator.head.bias, model.generator.head.bias.half().float())
    with pytest.raises(FileExistsError):
        release_encoder(src, out, name="tiny")


@pytest.mark.skipif(not COMMITTED, reason="no encoder committed under encoders/")
@pytest.mark.parametrize("folder", COMMITTED, ids=lambda p: p.name)
def test_committed_encoder_loads_in_transformers(folder):
    transformers = pytest.importorskip("transformers")
    from models.text import Tokenizer
    from models.tasks import tokenizer_file

    hf = transformers.RoFormerModel.from_pretrained(folder, dtype=torch.float32).eval()
    ours = RoFormerEncoder.from_pretrained(folder).eval()
    tok = Tokenizer.load(tokenizer_file(folder))
    enc = tok.encode("北京大学的张三去了上海。")
    ids = torch.tensor([enc.ids.tolist()])
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        mine = ours(ids, torch.ones_like(ids))
    assert (theirs - mine).abs().max().item() < 1e-3
    assert tok.unk_id not in enc.ids.tolist()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 30e6


def test_a_stage_released_over_its_predecessor_keeps_the_lineage(electra_run, tmp_path):
    _, src = electra_run
    rel = tmp_path / "rel"
    release_encoder(src, rel, name="stage 1")
    metrics = json.loads((src.parent / "metrics.json").read_text())
    metrics |= {"step": 5, "last_eval": {"accuracy": 0.5}, "config": {**metrics["config"], "model": {"init": str(rel)}}}
    (src.parent / "metrics.json").write_text(json.dumps(metrics))
    record = release_encoder(src, rel, name="stage 2", overwrite=True)  # over the folder it started from
    assert [s["name"] for s in record["stages"]] == ["stage 1", "stage 2"] and record["steps_total"] == 12
    assert record["continues"] == str(rel)
    card = (rel / "README.md").read_text()
    assert "12 steps in all" in card and "2. stage 2: electra, 5 steps, held-out accuracy 50.00%" in card
    record = release_encoder(src, tmp_path / "rel3", name="stage 3")  # from stage 2's folder: three stages
    assert [s["name"] for s in record["stages"]] == ["stage 1", "stage 2", "stage 3"]


def test_releasing_a_stage_again_onto_its_own_folder_lists_it_once(electra_run, tmp_path):
    """A stage released into the folder it started from, then released there again (new notes), is one
    stage of the lineage; a record that already lists a stage twice in a row is repaired."""
    _, src = electra_run
    rel = tmp_path / "rel"
    release_encoder(src, rel, name="stage 1")
    metrics = json.loads((src.parent / "metrics.json").read_text())
    metrics |= {"step": 5, "last_eval": {"accuracy": 0.5}, "data_position": {"epoch": 0, "index": 99},
                "config": {**metrics["config"], "model": {"init": str(rel)}}}
    (src.parent / "metrics.json").write_text(json.dumps(metrics))
    release_encoder(src, rel, name="stage 2", overwrite=True)
    record = release_encoder(src, rel, name="stage 2", overwrite=True, notes="again")
    assert [s["name"] for s in record["stages"]] == ["stage 1", "stage 2"] and record["steps_total"] == 12
    broken = json.loads((rel / "encoder.json").read_text())
    broken["stages"].insert(1, broken["stages"][1])  # stage 2 listed twice, as such a release once wrote it
    (rel / "encoder.json").write_text(json.dumps(broken))
    metrics |= {"data_position": {"epoch": 0, "index": 199}}  # a stage 3 from that folder
    (src.parent / "metrics.json").write_text(json.dumps(metrics))
    record = release_encoder(src, tmp_path / "rel3", name="stage 3")
    assert [s["name"] for s in record["stages"]] == ["stage 1", "stage 2", "stage 3"]
