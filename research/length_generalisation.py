"""Length generalisation of NER checkpoints: dev F1 on texts joined into ever longer documents.

    python research/length_generalisation.py --model runs/ner_cluener_e5/best --model runs/ner_cluener_eis/best \
        --data ../shared/data/cluener/dev.json --join 1,2,4,8 --decode flat --out metrics/research/length_generalisation.json

Every ``N`` consecutive dev records are joined into one text (gold spans shifted), and each joined text is
scored in ONE window of ``--max-length`` tokens (no windowing, so attention really spans the whole text):
a model fine-tuned on <= 64-token windows then sees sequences 4-8x longer than any it was trained on.
This is the test of the entropy-invariant attention scale log_512(n)/sqrt(d) (Su Jianlin): with it the
attention entropy should not grow with n, so F1 should fall less as the texts get longer. ``N = 1`` is the
ordinary dev score. Texts that do not fit the window are cut by the windowing of ``predict_entities``
(counted as ``windowed`` in the output; choose ``--join`` so that it is 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's packages, when run as a script

import torch  # noqa: E402

from models.tasks import load_ner, tokenizer_file  # noqa: E402
from models.text import Tokenizer  # noqa: E402
from training.data import ReadReport  # noqa: E402
from training.metrics import ner_scores  # noqa: E402
from training.ner import pred_spans, predict_entities  # noqa: E402
from training.ner_data import read_ner  # noqa: E402

log = logging.getLogger("research.length")


def joined(records, n: int) -> tuple[list[str], list[list[tuple[int, int, str]]]]:
    """Texts of ``n`` consecutive records joined, and their gold spans shifted into the joined text."""
    texts, gold = [], []
    for k in range(0, len(records), n):
        text, spans = "", []
        for r in records[k : k + n]:
            spans += [(s.start + len(text), s.end + len(text), s.label) for s in r.spans]
            text += r.text
        texts.append(text)
        gold.append(spans)
    return texts, gold


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, help="NER checkpoint (repeat to compare)")
    ap.add_argument("--data", required=True, help="labelled NER file (CLUENER json lines, CMeEE, ...)")
    ap.add_argument("--join", default="1,2,4,8", help="records joined per text (comma list)")
    ap.add_argument("--max-length", type=int, default=512, help="tokens of the single window (<= 512)")
    ap.add_argument("--decode", choices=["nested", "flat"], help="decoding for every model (default: each one's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="metrics JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    report = ReadReport()
    records = list(read_ner([args.data], report))
    report.check("raise")
    joins = [int(x) for x in args.join.split(",")]
    results = {}
    for path in args.model:
        net, tok = load_ner(path).eval(), Tokenizer.load(tokenizer_file(path))
        trained = net.cfg.max_length
        net.cfg = dataclasses.replace(net.cfg, max_length=args.max_length, stride=args.max_length // 2,
                                      decode=args.decode or net.cfg.decode)
        row = {"entropy_invariant_scale": net.encoder.cfg.entropy_invariant_scale, "trained_max_length": trained,
               "threshold": net.cfg.threshold, "decode": net.cfg.decode, "by_join": {}}
        for n in joins:
            texts, gold = joined(records, n)
            lengths = [len(tok.encode(t).ids) for t in texts]
            t0 = time.perf_counter()
            with torch.inference_mode():
                entities = predict_entities(net, tok, texts)
            s = ner_scores(gold, pred_spans(entities), net.cfg.labels)
            row["by_join"][str(n)] = {
                "texts": len(texts), "mean_tokens": round(sum(lengths) / len(lengths), 1), "max_tokens": max(lengths),
                "windowed": sum(x > args.max_length for x in lengths), "f1": round(100 * s["f1"], 2),
                "precision": round(100 * s["precision"], 2), "recall": round(100 * s["recall"], 2),
                "seconds": round(time.perf_counter() - t0, 1)}
            log.info("%s join %d: %s", path, n, row["by_join"][str(n)])
        results[str(path)] = row

    print(f"{'model':40} {'scale':>6} " + " ".join(f"{'join ' + str(n):>9}" for n in joins))
    for path, row in results.items():
        print(f"{path:40} {'log512' if row['entropy_invariant_scale'] else '1':>6} "
              + " ".join(f"{row['by_join'][str(n)]['f1']:9.2f}" for n in joins))
    if args.out:
        out = {"data": args.data, "max_length": args.max_length, "joins": joins, "models": results,
               "command": "python research/length_generalisation.py " + " ".join(argv or sys.argv[1:])}
        Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
