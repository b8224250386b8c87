"""One side of bench/peers.py: runs in a peer's own virtual environment (or in the project's, for ropenlp).
Not a test.

    runs/peers/st/bin/python bench/peers/peer.py build-st --encoder encoders/roformer-zh-v3 --out runs/peers/models
    runs/peers/st/bin/python bench/peers/peer.py worker      # JSON lines on stdin / stdout (bench/peers.py)

``build-st`` makes the peers' model folders from the encoder with the peers' own tools, as a user would:

* ``st/``: a sentence-transformers model (the encoder + mean pooling, max_seq_length 64), then ST's own
  ONNX export (``backend="onnx"``: ``onnx/model.onnx``) and its dynamic int8 export
  (``export_dynamic_quantized_onnx_model(model, "avx512_vnni", ...)``: ``onnx/model_qint8_avx512_vnni.onnx``);
* ``infinity/``: the same sentence-transformers folder without the fp32 graph, ST's int8 graph as
  ``onnx/model_quantized.onnx`` (the name infinity's optimum engine prefers on a CPU), its module files
  in the layout sentence-transformers 3.x reads (infinity's torch engine, for the reversal check);
* ``ner/``: ``RoFormerForTokenClassification`` on the encoder, a random classifier (seed 0; BIO tags over
  the 10 CLUENER types: 21 classes; the "O" bias raised until ~3 entities per text come out, as from a
  trained model, where a random classifier tags most tokens); ``ner-onnx/``: optimum's export of it and ``ORTQuantizer``'s dynamic
  int8 (``AutoQuantizationConfig.avx512_vnni(is_static=False)``): ``model_quantized.onnx``.

The tokenizer everywhere is ``BertTokenizerFast`` on the encoder's vocab.txt (lower case, CJK characters
split): the same WordPiece pipeline as ropenlp's ``models.text.Tokenizer.from_vocab``.

``worker``: the driver sends one JSON object per line; the reply is one JSON line (``{"error": ...}`` on a
failure). Libraries print to stdout (warnings, progress bars), so the protocol gets a private copy of it
and file descriptor 1 points at stderr.

* ``{"op": "load", "backend": NAME, "models": DIR, "threads": N, "texts": [...]}`` -> ``{"info": {...}}``
* ``{"op": "time", "size": B, "start": R, "calls": K}`` -> ``{"seconds": [...]}``: K calls, the i-th on
  ``chunk(texts, B, R + i)`` (``bench.common.chunk``), each timed here (no pipe in the figure);
* ``{"op": "run", "texts": [...]}`` -> ``{"vectors": [[...], ...]}`` (embed) or ``{"entities": [...]}`` (ner)
* ``{"op": "quit"}``.

Backends (``BACKENDS``): ``ropenlp-fp32`` / ``ropenlp-int8`` (``service.core.Engine`` on the bundle: embed
and ner), ``st-torch``, ``st-onnx``, ``st-onnx-int8`` (``SentenceTransformer.encode``), ``hf-ner-torch``
(``transformers.pipeline("token-classification", aggregation_strategy="simple")``) and
``optimum-ner-int8`` (optimum's ``pipeline`` on ``ORTModelForTokenClassification``). ONNX Runtime sessions
get ``intra_op_num_threads = N`` and otherwise the library's defaults; torch gets ``set_num_threads(N)``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # bench.common (stdlib + numpy at import) and, in the project's venv, ropenlp

from bench.common import chunk, load_texts

CLUENER_LABELS = (
    "address",
    "book",
    "company",
    "game",
    "government",
    "movie",
    "name",
    "organization",
    "position",
    "scene",
)
MAX_LENGTH = 64  # tokens per text, [CLS]/[SEP] included: ropenlp's shipped max_length, ST's max_seq_length
ST_INT8 = "onnx/model_qint8_avx512_vnni.onnx"


# --------------------------------------------------------------------------------------------
# build-st: the peers' model folders
# --------------------------------------------------------------------------------------------


def hf_tokenizer(encoder: Path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(
        vocab_file=str(encoder / "vocab.txt"),
        do_lower_case=True,
        tokenize_chinese_chars=True,
        model_max_length=512,
    )


def write_st3_modules(folder: Path, dim: int) -> None:
    """The module files in the layout sentence-transformers 3.x reads (infinity 0.0.77 pins ST < 4 for its
    torch engine; ST 5.x writes class paths that 3.x does not have). Mean pooling, 64 tokens."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    pooling = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_LENGTH, "do_lower_case": False}) + "\n"
    )
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (folder / "config_sentence_transformers.json").unlink(missing_ok=True)


def o_bias(model, tok, texts: list[str], *, per_text: float = 3.0) -> float:
    """What to add to the "O" logit of a random BIO classifier so that about ``per_text`` entities per text
    come out (as from a trained model; a random one tags most tokens), counted as the pipeline's
    ``aggregation_strategy="simple"`` groups them: a run of tokens of one type, a B- tag starting a new one."""
    import numpy as np
    import torch

    enc = tok(
        texts,
        padding=True,
        truncation=True,
        max_length=MAX_LENGTH,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    special = enc.pop("special_tokens_mask")
    with torch.inference_mode():
        logits = model(**enc).logits.numpy()  # (B, T, 1 + 2 * types)
    real = (enc["attention_mask"] == 1).numpy() & (special == 0).numpy()  # (B, T)

    def entities(delta: float) -> float:
        tags = (logits + np.eye(logits.shape[-1])[0] * delta).argmax(-1)  # (B, T)
        tags = np.where(real, tags, 0)
        prev = np.pad(tags[:, :-1], ((0, 0), (1, 0)))
        starts = (tags > 0) & ((prev == 0) | ((tags - 1) // 2 != (prev - 1) // 2) | ((tags - 1) % 2 == 0))
        return starts.sum() / len(texts)

    lo, hi = 0.0, 100.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if entities(mid) > per_text else (lo, mid)
    return hi


def build_st(encoder: Path, out: Path, *, seed: int = 0) -> dict:
    """The peers' folders under ``out`` (see the module doc); returns what was written."""
    import torch
    from optimum.onnxruntime import ORTModelForTokenClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import RoFormerForTokenClassification, RoFormerModel

    out.mkdir(parents=True, exist_ok=True)
    tok = hf_tokenizer(encoder)

    base = out / "hf-encoder"  # the encoder in fp32 as a plain RoFormerModel folder
    RoFormerModel.from_pretrained(str(encoder), dtype=torch.float32).save_pretrained(base)
    tok.save_pretrained(base)

    st_dir = out / "st"
    shutil.rmtree(st_dir, ignore_errors=True)
    word = Transformer(str(base), max_seq_length=MAX_LENGTH)
    pool = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pool], device="cpu").save(str(st_dir))
    onnx_model = SentenceTransformer(str(st_dir), backend="onnx", device="cpu")  # exports onnx/model.onnx
    onnx_model.save_pretrained(str(st_dir))
    export_dynamic_quantized_onnx_model(onnx_model, "avx512_vnni", str(st_dir))

    inf_dir = out / "infinity"
    shutil.rmtree(inf_dir, ignore_errors=True)
    shutil.copytree(st_dir, inf_dir, ignore=shutil.ignore_patterns("onnx"))
    (inf_dir / "onnx").mkdir()
    shutil.copyfile(st_dir / ST_INT8, inf_dir / "onnx" / "model_quantized.onnx")
    write_st3_modules(inf_dir, word.get_embedding_dimension())

    labels = ["O"] + [f"{p}-{t}" for t in CLUENER_LABELS for p in ("B", "I")]
    torch.manual_seed(seed)  # the classifier is initialised from the global RNG
    ner = RoFormerForTokenClassification.from_pretrained(
        str(encoder),
        dtype=torch.float32,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={x: i for i, x in enumerate(labels)},
    )
    ner.eval()
    ner.classifier.bias.data[0] += o_bias(ner, tok, load_texts("cluener")[0][:64])
    ner_dir = out / "ner"
    ner.save_pretrained(ner_dir)
    tok.save_pretrained(ner_dir)
    ner_onnx = out / "ner-onnx"
    shutil.rmtree(ner_onnx, ignore_errors=True)
    ort_ner = ORTModelForTokenClassification.from_pretrained(str(ner_dir), export=True)
    ort_ner.save_pretrained(ner_onnx)
    tok.save_pretrained(ner_onnx)
    ORTQuantizer.from_pretrained(ort_ner).quantize(
        save_dir=ner_onnx, quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False)
    )
    return {p.relative_to(out).as_posix(): p.stat().st_size for p in sorted(out.rglob("*.onnx"))}


# --------------------------------------------------------------------------------------------
# Backends: (models dir, threads, texts) -> (call texts -> output, info)
# --------------------------------------------------------------------------------------------


def _ort_options(threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return so


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _ropenlp(precision: str) -> Callable:
    def load(models: Path, threads: int, texts: list[str], task: str):
        from bench.engine import calibrate_threshold
        from service.core import Engine, Limits

        limits = Limits(max_items=256, threshold_min=-1e4, threshold_max=1e4, max_entities=10**9)
        engine = Engine.load(
            models / "bundle",
            limits=limits,
            provider="cpu",
            precision=precision,
            intra_op_threads=threads,
            inter_op_threads=1,
        )
        engine.warm_up()
        info = {"precision": engine.runtime.precision.get("similarity" if task == "embed" else "ner")}
        if task == "embed":
            return (lambda batch: engine.run("embed", texts=batch).vectors), info
        # a random GlobalPointer head scores around 0: a threshold that lets ~3 entities per text through
        # after flat decoding (as many as the token classifier's, see o_bias)
        sample = texts[:64]

        def per_text(t: float) -> float:
            return sum(map(len, engine.run("ner", texts=sample, threshold=t).entities)) / len(sample)

        lo, hi = calibrate_threshold(engine, sample, 100.0), calibrate_threshold(engine, sample, 3.0)
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if per_text(mid) > 3.0 else (lo, mid)
        threshold = hi
        info |= {"threshold": threshold, "entities_per_text": per_text(threshold)}

        def ner(batch):
            return [
                [(e.start, e.end, e.label) for e in ents]
                for ents in engine.run("ner", texts=batch, threshold=threshold).entities
            ]

        return ner, info

    return load


def _st(file_name: str | None) -> Callable:
    def load(models: Path, threads: int, texts: list[str], task: str):
        from sentence_transformers import SentenceTransformer

        _torch_threads(threads)  # ST pools and normalises in torch on either backend
        if file_name is None:
            model = SentenceTransformer(str(models / "st"), device="cpu")
        else:
            kwargs = {
                "file_name": file_name,
                "provider": "CPUExecutionProvider",
                "session_options": _ort_options(threads),
            }
            model = SentenceTransformer(str(models / "st"), device="cpu", backend="onnx", model_kwargs=kwargs)

        def embed(batch):
            return model.encode(
                batch,
                batch_size=len(batch),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

        return embed, {"backend": "torch" if file_name is None else f"onnx ({file_name})"}

    return load


def _entities(out: list) -> list:
    return [[(e["start"], e["end"], e["entity_group"]) for e in ents] for ents in out]


def _hf_ner(models: Path, threads: int, texts: list[str], task: str):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    _torch_threads(threads)
    model = AutoModelForTokenClassification.from_pretrained(str(models / "ner")).eval()
    tok = AutoTokenizer.from_pretrained(str(models / "ner"))
    pipe = pipeline(
        "token-classification", model=model, tokenizer=tok, aggregation_strategy="simple", device=-1
    )
    return (lambda batch: _entities(pipe(batch, batch_size=len(batch)))), {"aggregation": "simple"}


def _optimum_ner(models: Path, threads: int, texts: list[str], task: str):
    from optimum.onnxruntime import ORTModelForTokenClassification
    from optimum.onnxruntime.pipelines import pipeline
    from transformers import AutoTokenizer

    _torch_threads(threads)
    model = ORTModelForTokenClassification.from_pretrained(
        str(models / "ner-onnx"),
        file_name="model_quantized.onnx",
        provider="CPUExecutionProvider",
        session_options=_ort_options(threads),
    )
    tok = AutoTokenizer.from_pretrained(str(models / "ner-onnx"))
    pipe = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple")
    return (lambda batch: _entities(pipe(batch, batch_size=len(batch)))), {"aggregation": "simple"}


# name -> (tasks it serves, loader); the venv each runs in is bench/peers.py's business
BACKENDS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "ropenlp-fp32": (("embed", "ner"), _ropenlp("fp32")),
    "ropenlp-int8": (("embed", "ner"), _ropenlp("int8")),
    "st-torch": (("embed",), _st(None)),
    "st-onnx": (("embed",), _st("onnx/model.onnx")),
    "st-onnx-int8": (("embed",), _st(ST_INT8)),
    "hf-ner-torch": (("ner",), _hf_ner),
    "optimum-ner-int8": (("ner",), _optimum_ner),
}


# --------------------------------------------------------------------------------------------
# worker: JSON lines
# --------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in (
        "numpy",
        "torch",
        "transformers",
        "tokenizers",
        "onnxruntime",
        "optimum",
        "optimum-onnx",
        "sentence-transformers",
        "infinity-emb",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _plain(x):
    """Vectors as lists, tuples as lists: what json can write."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.astype(float).tolist()
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def worker(inp=sys.stdin, out_fd: int | None = None) -> None:
    if out_fd is None:
        out_fd = os.dup(1)
        os.dup2(2, 1)  # whatever the libraries print goes to stderr
    out = os.fdopen(out_fd, "w", encoding="utf-8", buffering=1)
    fn, texts = None, []
    for line in inp:
        msg = json.loads(line)
        try:
            op = msg["op"]
            if op == "quit":
                break
            if op == "load":
                tasks, loader = BACKENDS[msg["backend"]]
                if msg["task"] not in tasks:
                    raise ValueError(f"{msg['backend']} does not do {msg['task']}")
                texts = msg["texts"]
                t0 = time.perf_counter()
                fn, info = loader(Path(msg["models"]), int(msg["threads"]), texts, msg["task"])
                reply = {
                    "info": info
                    | {
                        "load_seconds": time.perf_counter() - t0,
                        "versions": _versions(),
                        "python": sys.executable,
                    }
                }
            elif op == "time":
                seconds = []
                for i in range(int(msg["calls"])):
                    batch = chunk(texts, int(msg["size"]), int(msg["start"]) + i)
                    t0 = time.perf_counter()
                    fn(batch)
                    seconds.append(time.perf_counter() - t0)
                reply = {"seconds": seconds}
            elif op == "run":
                result = fn(msg["texts"])
                key = "entities" if msg.get("task") == "ner" else "vectors"
                reply = {key: _plain(result)}
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - reported to the driver, which decides
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build-st", help="the peers' model folders (sentence-transformers / optimum venv)")
    b.add_argument("--encoder", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    sub.add_parser("worker", help="JSON lines on stdin / stdout")
    sub.add_parser("versions", help="the versions of the packages that matter here, as JSON")
    args = p.parse_args(argv)
    if args.cmd == "build-st":
        print(json.dumps(build_st(args.encoder, args.out, seed=args.seed), indent=2))
    elif args.cmd == "versions":
        print(json.dumps(_versions()))
    else:
        worker()


if __name__ == "__main__":
    main()
