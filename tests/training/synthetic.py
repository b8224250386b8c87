"""Tiny synthetic NER and sentence-pair data (written by the tests, never copied from the datasets)
and tiny task configs over the session's tiny vocabulary."""

import json
import random

TINY_ENCODER = {"model.encoder.hidden_size": 32, "model.encoder.num_hidden_layers": 2,
                "model.encoder.num_attention_heads": 2, "model.encoder.intermediate_size": 64,
                "model.encoder.max_position_embeddings": 64, "model.encoder.hidden_dropout_prob": 0.0,
                "model.encoder.attention_probs_dropout_prob": 0.0}

NAMES = ["张三", "李四"]
PLACES = ["北京", "上海", "中国"]
ORGS = [("北京大学", "北京"), ("清华大学", None), ("人民银行", None), ("中国银行", "中国"), ("上海大学", "上海")]
FILLER = list("我你他的了是在和与有一个到这")


def ner_record(rng: random.Random) -> dict:
    """CLUENER-style record; organisations may contain a place (nested)."""
    parts, label = [], {}

    def add(text, kind):
        start = sum(len(p) for p in parts)
        label.setdefault(kind, {}).setdefault(text, []).append([start, start + len(text) - 1])
        return start

    for _ in range(rng.randint(1, 3)):
        parts.append("".join(rng.choices(FILLER, k=rng.randint(0, 2))))
        kind = rng.choice(["name", "place", "org"])
        if kind in ("name", "place"):
            word = rng.choice(NAMES if kind == "name" else PLACES)
            add(word, kind)
            parts.append(word)
        else:
            org, inner = rng.choice(ORGS)
            start = add(org, "org")
            if inner:
                label.setdefault("place", {}).setdefault(inner, []).append([start, start + len(inner) - 1])
            parts.append(org)
    text = "".join(parts)
    for kind in label.values():  # de-duplicate positions (the same entity may be drawn twice)
        for k, pos in kind.items():
            kind[k] = sorted({tuple(p) for p in pos})
            kind[k] = [list(p) for p in kind[k]]
    return {"text": text, "label": label}


def write_ner(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    recs = []
    while len(recs) < n:
        r = ner_record(rng)
        ok = all(r["text"][s:e + 1] == ent for kind in r["label"].values() for ent, ps in kind.items()
                 for s, e in ps)
        if ok:
            recs.append(r)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")


SIM_CHARS = list("北京上海天安门广场大学清华人民银行中国公司张三李四")


def write_pairs(path, n: int, seed: int, *, scale: int = 5) -> None:
    """Pairs whose label is their character overlap (Jaccard) on a 0..scale integer scale."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a = rng.sample(SIM_CHARS, rng.randint(3, 6))
        keep = rng.randint(0, len(a))
        b = a[:keep] + rng.sample([c for c in SIM_CHARS if c not in a], rng.randint(0, 3))
        if not b:
            b = [rng.choice([c for c in SIM_CHARS if c not in a])]
        jac = len(set(a) & set(b)) / len(set(a) | set(b))
        lines.append(f"{''.join(a)}\t{''.join(b)}\t{round(jac * scale)}\n")
    path.write_text("".join(lines), encoding="utf-8")


def tiny_ner_config(data_dir, out_dir, vocab, **overrides):
    """A tiny NER run over ``train.json`` / ``dev.json`` of ``write_ner`` (40 steps, calibrated threshold)."""
    from training.ner import load_ner_config

    base = TINY_ENCODER | {
        "data.root": str(data_dir), "data.train": ["train.json"], "data.dev": ["dev.json"],
        "data.max_length": 24, "data.stride": 12, "vocab.path": str(vocab), "model.head_size": 16,
        "ner.head_lr": 1e-2, "ner.eval_every_epoch": False, "ner.calibrate_threshold": True,
        "training.lr": 3e-3, "training.batch_size": 16, "training.max_steps": 40, "training.warmup_steps": 3,
        "training.eval_every": 20, "training.checkpoint_every": 20, "training.progress": "off",
        "training.threads": 1, "output.dir": str(out_dir)}
    return load_ner_config(None, base | overrides)
