"""``docs/adding-a-task.md``, followed step by step by a task that exists only here: ``classify``, a tiny
text-classification head ([CLS] -> linear -> softmax) on the RoFormer encoder. It trains, exports,
serves over HTTP and scores with ``ropenlp score`` through the registries alone: no file outside this
one names it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from pydantic import BaseModel, Field

from models.bundle import TaskSpec, register_task_spec
from service.jobs import Job, Limits, Seq
from service.tasks import Body, Operation, ScoreSpec, Task, register
from service.validate import check_texts

torch = pytest.importorskip("torch", reason="training and exporting a task needs the train extra")
nn = torch.nn

LABELS = ("place", "person")
TRAIN = [("我爱北京天安门", "place"), ("上海的人", "place"), ("北京大学", "place"), ("中国银行在上海", "place"),
         ("张三", "person"), ("李四在工作", "person"), ("张三和李四", "person"), ("李四是人", "person")]


# --------------------------------------------------------------------------------------------
# Step 1: the manifest spec (torch-free), registered
# --------------------------------------------------------------------------------------------


class ClassifyTask(TaskSpec):
    limits = ("A test-only task: two classes learnt in a few steps from eight sentences.",)

    kind: Literal["classify"] = "classify"
    labels: list[str] = Field(min_length=2)


register_task_spec(ClassifyTask)


# --------------------------------------------------------------------------------------------
# Step 2: the PyTorch model, its checkpoint and loader
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassifierConfig:
    labels: tuple[str, ...]
    max_length: int = 32


class Classifier(nn.Module):
    """Encoder -> [CLS] -> linear: one logit per label."""

    def __init__(self, encoder, cfg: ClassifierConfig):
        super().__init__()
        self.encoder, self.cfg = encoder, cfg
        self.head = nn.Linear(encoder.cfg.hidden_size, len(cfg.labels))

    def forward(self, input_ids, attention_mask, targets=None):
        hidden = self.encoder(input_ids, attention_mask)  # (B, T, H)
        logits = self.head(hidden[:, 0])  # (B, C)
        loss = nn.functional.cross_entropy(logits, targets) if targets is not None else None
        return logits, loss

    def save(self, path: Path, vocab: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(path)
        head = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, str(path / "head.safetensors"))
        (path / "ropenlp.json").write_text(json.dumps({"task": "classify", "labels": list(self.cfg.labels),
                                                       "max_length": self.cfg.max_length}))
        shutil.copyfile(vocab, path / "vocab.txt")


def load_classifier(path: Path) -> Classifier:
    from safetensors.torch import load_file

    from models.roformer import RoFormerEncoder

    meta = json.loads((path / "ropenlp.json").read_text())
    cfg = ClassifierConfig(tuple(meta["labels"]), meta["max_length"])
    model = Classifier(RoFormerEncoder.from_pretrained(path), cfg)
    model.head.load_state_dict(load_file(str(path / "head.safetensors")))
    return model


# --------------------------------------------------------------------------------------------
# Step 3: training (the generic loop)
# --------------------------------------------------------------------------------------------


def train(root: Path, steps: int = 6) -> Path:
    from models.roformer import RoFormerConfig, RoFormerEncoder
    from models.text import Tokenizer, pad_batch
    from tests.service.conftest import VOCAB
    from training.batches import EpochBatches
    from training.config import TrainingConfig
    from training.loop import fit, open_run

    vocab = root / "vocab.txt"
    vocab.write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")
    tok = Tokenizer.load(vocab)
    torch.manual_seed(0)
    enc = RoFormerEncoder(RoFormerConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    model = Classifier(enc, ClassifierConfig(LABELS))
    examples = [(ids, LABELS.index(label)) for ids, (_, label) in zip(tok.encode_ids([t for t, _ in TRAIN]), TRAIN)]

    def collate(batch, generator):
        ids, mask = pad_batch([ids for ids, _ in batch], pad_id=tok.pad_id)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
                "targets": torch.tensor([y for _, y in batch])}

    batches = EpochBatches(examples, collate=collate, lengths=[len(ids) for ids, _ in examples], batch_size=4)
    cfg = TrainingConfig(lr=1e-3, batch_size=4, max_steps=steps, eval_every=0, checkpoint_every=0, progress="off")
    run = open_run(root / "run", cfg, resume=False)
    result = fit(model, batches, cfg, out_dir=run.out, total_steps=steps, save_model=lambda d: model.save(d, vocab),
                 device=run.device)
    assert result.step == steps
    return run.out / "model"


# --------------------------------------------------------------------------------------------
# Step 4: the exporter
# --------------------------------------------------------------------------------------------


def _register_exporter():
    from export.tasks import TaskExporter, register_exporter
    from export.variants import Parity

    class ClassifyGraph(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            logits, _ = self.model(input_ids, attention_mask)
            return torch.softmax(logits.float(), dim=-1)  # (B, C)

    @register_exporter
    class ClassifyExporter(TaskExporter):
        kind = "classify"
        file_prefix = "cls"
        output = "probabilities"
        output_axes = {0: "batch"}
        required_files = ("head.safetensors",)

        def load(self, path):
            return load_classifier(path)

        def graph(self, model):
            return ClassifyGraph(model)

        def parity(self, model, graph, tokenizer, texts):
            from export import parity

            batches = parity.sim_batches(tokenizer, texts, max_length=model.cfg.max_length)

            def torch_run(b):
                with torch.no_grad():
                    return graph(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)).numpy()

            def compare(ref, got):
                same = np.mean(np.concatenate(ref).argmax(1) == np.concatenate(got).argmax(1))
                return {"max_abs_diff": parity.max_abs_diff(got, ref), "label_agreement": round(100 * float(same), 2)}

            return Parity(reference=parity.run_all(torch_run, batches),
                          run=lambda f: parity.run_all(parity.onnx_runner(f), batches),
                          compare=compare, finite=lambda out: out, what="probabilities")

        def spec(self, model, graphs, metrics):
            return ClassifyTask(graphs=graphs, max_length=model.cfg.max_length, metrics=metrics,
                                labels=list(model.cfg.labels))


# --------------------------------------------------------------------------------------------
# Step 5: serving (one task, one operation: POST /classify, `ropenlp score classify`)
# --------------------------------------------------------------------------------------------


class ClassifyQuery(Body):
    texts: list[str] = Field(description="texts to classify (cut to max_length tokens)")


@dataclass(frozen=True)
class ClassifyResult:
    labels: list[str]
    scores: list[float]


class ClassItem(BaseModel):
    label: str
    score: float = Field(description="the label's probability")


class ClassifyResponse(BaseModel):
    results: list[ClassItem]


class Classify(Operation):
    """The most likely label of every text."""

    name = task = "classify"
    query = ClassifyQuery
    response = ClassifyResponse
    summary = "Text classes (a test-only task)"
    score = ScoreSpec(items="texts", help="classes")

    def prepare(self, task: ClassifyServing, q: ClassifyQuery) -> Job:
        texts = check_texts(q.texts, "texts", task.limits)
        L, sep = task.spec.max_length, np.array([task.tokenizer.sep_id], dtype=np.int64)
        encoded = task.tokenizer.encode_ids(texts)
        rows = [np.concatenate([ids[: L - 1], sep]) if len(ids) > L else ids for ids in encoded]
        return Job(self.name, self.task, [Seq(ids) for ids in rows])

    def finish(self, task: ClassifyServing, job: Job, outputs: list[np.ndarray]) -> ClassifyResult:
        probs = np.stack(outputs)  # (n, C)
        best = probs.argmax(axis=1)
        return ClassifyResult([task.spec.labels[k] for k in best], [float(probs[r, k]) for r, k in enumerate(best)])

    def render(self, result: ClassifyResult) -> ClassifyResponse:
        return ClassifyResponse(results=[ClassItem(label=a, score=s) for a, s in zip(result.labels, result.scores)])

    def records(self, result: ClassifyResult, limits: Limits) -> list[dict[str, Any]]:
        return [item.model_dump() for item in self.render(result).results]


@register
class ClassifyServing(Task):
    kind = "classify"
    operations = (Classify(),)
    warm_up = (("classify", {"texts": ["北京"]}),)

    def postprocess(self, out: np.ndarray, seqs) -> list[np.ndarray]:
        return list(out)  # (C,) per row


# --------------------------------------------------------------------------------------------
# Steps 6-7: nothing else to edit; train -> export -> serve -> score
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from export.onnx import export_bundle

    _register_exporter()
    root = tmp_path_factory.mktemp("classify")
    ckpt = train(root)
    from export.variants import CalibrationTexts

    export_bundle(root / "bundle", classify=ckpt, precisions=("fp32", "int8"), name="classify-test",
                  training_data=[("eight synthetic sentences", "CC0-1.0")],
                  calibration={"classify": CalibrationTexts("the training sentences", [t for t, _ in TRAIN])})
    return root / "bundle"


def test_export_writes_the_task_like_any_other(bundle) -> None:
    from models.bundle import load_manifest

    m = load_manifest(bundle)
    spec = m.tasks["classify"]
    assert isinstance(spec, ClassifyTask) and spec.labels == list(LABELS) and list(m.tasks) == ["classify"]
    assert set(spec.graphs) == {"fp32", "int8"} and spec.graphs["fp32"].outputs == ["probabilities"]
    assert spec.graphs["fp32"].parity["reference"] == "pytorch" and spec.graphs["fp32"].parity["max_abs_diff"] < 1e-4
    assert spec.graphs["int8"].parity["reference"] == "fp32" and "label_agreement" in spec.graphs["int8"].parity
    assert spec.graphs["int8"].quantization.batch_invariant  # static int8 of a new kind: rows by the default
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Task: classify" in card and "eight synthetic sentences" in card and "test-only task" in card


def test_serve_and_score_through_the_registry(bundle, tmp_path) -> None:
    import httpx
    from typer.testing import CliRunner

    from ropenlp.cli import app
    from service.core import Engine
    from tests.service.conftest import running, settings

    texts = ["我爱北京", "张三", "李四在上海工作" * 10]
    engine = Engine.load(bundle, provider="cpu")
    direct = engine.run("classify", texts=texts)
    assert direct.labels and all(label in LABELS for label in direct.labels)

    with running(settings(bundle=bundle)) as base:
        r = httpx.post(base + "/classify", json={"texts": texts}, timeout=30)
        assert r.status_code == 200, r.text
        assert "x-inference-time" in r.headers
        got = ClassifyResponse.model_validate(r.json()).results
        assert [x.label for x in got] == direct.labels
        assert np.allclose([x.score for x in got], direct.scores, atol=1e-4)
        assert httpx.post(base + "/classify", json={"texts": []}).json()["error_type"] == "empty_input"
        assert httpx.post(base + "/ner", json={"texts": ["北京"]}).status_code == 501  # not in this bundle
        info = httpx.get(base + "/info").json()
        assert info["tasks"]["classify"]["labels"] == list(LABELS)
        schema = httpx.get(base + "/schema/openapi.json").json()
        assert "/classify" in schema["paths"] and "ClassifyResponse" in json.dumps(schema["components"])

    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in [*texts, ""]), encoding="utf-8")
    res = CliRunner().invoke(app, ["score", "classify", "-i", str(src), "-o", str(out), "--bundle", str(bundle),
                                   "--progress", "none"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [x.get("label") for x in lines[:3]] == direct.labels and lines[3]["error_type"] == "empty_input"
    assert np.allclose([x["score"] for x in lines[:3]], direct.scores, atol=1e-4)
