"""Shared fixtures: a tiny synthetic corpus (written here, never copied from the datasets) and a
tiny MLM config over it."""

import random

import pytest

from training.batches import EpochBatches
from training.mlm import MlmConfig, load_mlm_config

CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经"
WORDS = ["hello", "covid19", "2024", "ok"]


def synthetic_lines(n: int, seed: int = 0) -> list[str]:
    """Chinese-like lines with a skewed character distribution, some Latin words and numbers."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(CHARS))]
    lines = []
    for _ in range(n):
        text = "".join(rng.choices(CHARS, weights, k=rng.randint(4, 30)))
        if rng.random() < 0.2:
            text += rng.choice(WORDS) + "。"
        lines.append(text)
    return lines


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    lines = synthetic_lines(1200)
    (d / "a.txt").write_text("\n".join(lines[:800]) + "\n", encoding="utf-8")
    (d / "b.txt").write_text("\n".join(lines[800:]) + "\n", encoding="utf-8")
    return d


def tiny_mlm_config(corpus_dir, out_dir, **overrides) -> MlmConfig:
    base = {
        "data.root": str(corpus_dir), "data.sources": [{"paths": ["*.txt"]}], "data.max_length": 32,
        "data.heldout_fraction": 0.05, "vocab.min_count": 1,
        "model.encoder.hidden_size": 32, "model.encoder.num_hidden_layers": 2,
        "model.encoder.num_attention_heads": 2, "model.encoder.intermediate_size": 64,
        "model.encoder.max_position_embeddings": 64,
        "training.batch_size": 8, "training.max_steps": 6, "training.lr": 2e-3, "training.warmup_steps": 2,
        "training.eval_every": 0, "training.checkpoint_every": 3, "training.progress": "off",
        "output.dir": str(out_dir),
    }
    return load_mlm_config(None, base | overrides)


class InterruptedBatches(EpochBatches):
    """Ctrl-C while fetching the 4th batch (after a step-3 checkpoint): for exact-resume tests."""

    def __next__(self):
        if getattr(self, "calls", 0) == 3:
            raise KeyboardInterrupt
        self.calls = getattr(self, "calls", 0) + 1
        return super().__next__()


@pytest.fixture(scope="module")
def ner_data(tmp_path_factory):
    """Synthetic NER train (160 texts) and dev (30) files in the CLUENER format (synthetic.write_ner)."""
    from .synthetic import write_ner

    d = tmp_path_factory.mktemp("ner")
    write_ner(d / "train.json", 160, seed=1)
    write_ner(d / "dev.json", 30, seed=2)
    return d
