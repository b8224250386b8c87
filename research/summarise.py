"""The README's "What was tried" tables, from the evaluations research/runs.sh and research/sim_v3.sh committed
in metrics/research/.

    python research/summarise.py          # prints Markdown; writes metrics/research/summary.json

Training wall times come from each run's step log (``runs/NAME/log.jsonl``: the sum of step and evaluation
seconds, one thread) while the run folder exists, else from the summary written last time.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIR = ROOT / "metrics" / "research"
NER_RUNS = ["ner_cluener_scratch_e5", "ner_cluener_e5", "ner_cluener_gp", "ner_cluener_eis", "ner_cluener_e12",
            "ner_cluener_e12_ema", "ner_cluener_noema", "ner_cluener"]
SIM_RUNS = ["sim_stsb_cls", "sim_stsb_mean", "sim_stsb_fla"]
# CMeEE, nested decoding at the dev-best threshold (ner_cmeee: the shipped model, whose committed evaluation is
# of its fp32 bundle at the threshold calibrated in training, on the same grid)
CMEEE_RUNS = ["ner_cmeee", "ner_cmeee_gp", "ner_cmeee_gp_ema"]
# Encoder v3 (research/pretrain_v3.sh): speed of each objective and option (40 steps, one thread), and the
# objectives at equal CPU time, each followed by the same 5-epoch CLUENER fine-tune
SPEED_RUNS = {"spd_mlm": "MLM, bf16, packed, prefetch (the baseline)", "spd_wwm": "whole-word MLM",
              "spd_electra": "ELECTRA (generator 128 wide)", "spd_mlm_fp32": "MLM, fp32",
              "spd_mlm_noprefetch": "MLM, batches built in the training thread",
              "spd_mlm_unpacked": "MLM, one line per sequence (padded)", "spd_mlm_6x384": "MLM, 6 x 384",
              "spd_electra_6x384": "ELECTRA, 6 x 384"}
OBJECTIVE_RUNS = {"obj_mlm": "MLM (characters)", "obj_wwm": "whole-word MLM", "obj_electra": "ELECTRA"}
# Similarity v3 (research/sim_v3.sh): objective rows, then the pooling re-check (first-last-avg = sim_v3)
SIM_V3_RUNS = {"sim_v3": "pairs CoSENT + NLI SimCSE, one mixture", "sim_v3_cosent": "every set CoSENT (NLI 2 > 1 > 0)",
               "sim_v3_nli": "NLI SimCSE only (stage 1)", "sim_v3_cosent_pairs": "pairs CoSENT only",
               "sim_v3_pairs": "NLI SimCSE -> pairs CoSENT (two stages)",
               "sim_v3_cls": "pairs CoSENT + NLI SimCSE, one mixture", "sim_v3_mean": "pairs CoSENT + NLI SimCSE, one mixture",
               # the same objectives at an equal short budget (research/sim_v3.sh short: 600 steps each)
               "sim_s_mix": "pairs CoSENT + NLI SimCSE, one mixture (600 steps)",
               "sim_s_cosent": "every set CoSENT (600 steps)", "sim_s_pairs": "pairs CoSENT only (600 steps)",
               "sim_s_nli": "NLI SimCSE only (300 steps)",
               "sim_s_nli_pairs": "NLI SimCSE 300 -> pairs CoSENT 300 steps",
               # research/sim_v3.sh stage3 / stage4 / stage5: sim_v3 (trained on encoder stage 1) again on stage 3 and 4
               "sim_v3_s3": "pairs CoSENT + NLI SimCSE, one mixture, encoder stage 3",
               "sim_v3_s4": "pairs CoSENT + NLI SimCSE, one mixture, encoder stage 4",
               "sim_v3_s5": "pairs CoSENT + NLI SimCSE, one mixture, encoder stage 5",
               "sim_v3_s5_e1": "the same over a whole epoch (4,738 steps), encoder stage 5",
               # research/sim_v3.sh ibn5
               "sim_v3_s5_ibn": "the same + in-batch softmax over CoSENT positives (sim.contrastive_weight 1), stage 5",
               # research/sim_v3.sh ibnsoup5
               "sim_v3_s5_ibn_seed1": "the same, seed 1, stage 5",
               "sim_v3_s5_ibn_soup": "weight average of the two seeds (ropenlp train average), stage 5",
               # research/sim_v3.sh rest5
               "sim_v3_s5_ibn_rest": "sim_v3_s5_ibn continued over the rest of its epoch (its data after step 2,985, "
                                     "1,753 steps, lr 4e-5), stage 5",
               # research/sim_v3.sh e2_5
               "sim_v3_s5_ibn_e2": "sim_v3_s5_ibn_rest into a second epoch (its data after epoch 1.000, 1,753 steps, "
                                   "lr 3e-5), stage 5",
               # research/sim_v3.sh pathavg5
               "sim_v3_s5_ibn_path": "weight average of sim_v3_s5_ibn_rest and sim_v3_s5_ibn_e2 (one path; "
                                     "ropenlp train average), stage 5",
               # research/sim_v3.sh e3_5
               "sim_v3_s5_ibn_e3": "sim_v3_s5_ibn_e2 on through epoch 2 (its data after epoch 1.370, 1,753 steps, "
                                   "lr 3e-5), stage 5",
               # research/sim_v3.sh e4_5
               "sim_v3_s5_ibn_e4": "sim_v3_s5_ibn_e3 on past epoch 2's end (its data after epoch 1.740, 1,753 steps, "
                                   "lr 3e-5), stage 5",
               # research/sim_v3.sh short5: the two at an equal short budget (600 steps), encoder stage 5
               "sim_s5_mix": "pairs CoSENT + NLI SimCSE, one mixture (600 steps), encoder stage 5",
               "sim_s5_ibn": "the same + in-batch softmax over CoSENT positives (600 steps), encoder stage 5",
               # research/sim_v3.sh short5b
               "sim_s5_ibn_seed1": "the same, seed 1 (600 steps), encoder stage 5",
               "sim_s5_ibn3": "the same with the softmax weighted 3 (600 steps), encoder stage 5",
               # research/sim_v3.sh swap4
               "sim_v3_s4_swap": "the same + word-order negatives (sim.swap_negatives 0.5), encoder stage 4"}
# NER on the committed v3 encoder (research/pretrain_v3.sh ner): the shipping recipes, and what was added
NER_V3_RUNS = {"ner_cluener_v3": ("CLUENER", "recipes/ner_cluener.toml (GP, EMA 0.999, 12 epochs)"),
               "ner_cluener_inter": ("CLUENER", "+ intermediate NER stage (MSRA + Resume, 4 epochs)"),
               "ner_cluener_inter_fgm": ("CLUENER", "+ intermediate stage + FGM (epsilon 0.5)"),
               "ner_cmeee_v3": ("CMeEE", "recipes/ner_cmeee.toml (GP, EMA 0.999, 10 epochs)"),
               # research/pretrain_v3.sh ner3: the same on encoder stage 3 (the rows above are on stage 2)
               "ner_cluener_s3_inter_fgm": ("CLUENER", "stage 3: intermediate stage + FGM (epsilon 0.5)"),
               "ner_cmeee_s3_fgm": ("CMeEE", "stage 3: recipes/ner_cmeee.toml + FGM (epsilon 0.5)"),
               # research/pretrain_v3.sh ner4: the same on encoder stage 4
               "ner_cluener_s4_inter_fgm": ("CLUENER", "stage 4: intermediate stage + FGM (epsilon 0.5)"),
               "ner_cluener_s4_inter_fgm_e8": ("CLUENER", "stage 4: intermediate stage + FGM, 8 epochs"),
               "ner_cmeee_s4_fgm": ("CMeEE", "stage 4: recipes/ner_cmeee.toml + FGM (epsilon 0.5)"),
               # research/pretrain_v3.sh soup3 / soup4: two more seeds of ner_cluener_s{3,4}_inter_fgm from its
               # start, and the average of the three
               "ner_cluener_s3_inter_fgm_seed1": ("CLUENER", "stage 3: intermediate stage + FGM, seed 1 (init_seed 42)"),
               "ner_cluener_s3_inter_fgm_seed2": ("CLUENER", "stage 3: intermediate stage + FGM, seed 2 (init_seed 42)"),
               "ner_cluener_s3_soup": ("CLUENER", "stage 3: the weight average of the three seeds"),
               "ner_cluener_s4_inter_fgm_seed1": ("CLUENER", "stage 4: intermediate stage + FGM, seed 1 (init_seed 42)"),
               "ner_cluener_s4_inter_fgm_seed2": ("CLUENER", "stage 4: intermediate stage + FGM, seed 2 (init_seed 42)"),
               "ner_cluener_s4_soup": ("CLUENER", "stage 4: the weight average of the three seeds"),
               # research/pretrain_v3.sh stages: the same 5-epoch CLUENER fine-tune on encoder stages 2 and 3
               "ner_s2_e5": ("CLUENER", "5 epochs on encoder stage 2"),
               "ner_s3_e5": ("CLUENER", "5 epochs on encoder stage 3")}
DEV_SETS = {"stsb_zh": "STS-B", "lcqmc": "LCQMC", "bq": "BQ", "atec": "ATEC", "pawsx": "PAWS-X"}


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def wall_minutes(run: str, previous: dict) -> float | None:
    log = ROOT / "runs" / run / "log.jsonl"
    if not log.is_file():
        if run in previous:
            return previous[run].get("wall_min")
        seconds = (_json(DIR / f"{run}.train.json") or {}).get("seconds")  # the run's own total
        return round(seconds / 60, 1) if seconds else None
    seconds = sum(json.loads(line).get("seconds", 0.0) for line in log.read_text(encoding="utf-8").splitlines() if line)
    return round(seconds / 60, 1)


def encoder_of(cfg: dict) -> str:
    model = cfg["model"]
    if model.get("random_init"):
        return "random init"
    init = Path(model.get("init") or "").parent.name or "from scratch"
    return {"mlm_small": "MLM 0.85 ep", "mlm_long": "MLM 2.35 ep"}.get(init, init)


def dev_columns(files: dict[str, dict]) -> dict[str, float]:
    """Spearman x 100 per dev set (by the file's folder: stsb_zh/dev.tsv -> STS-B) and their mean."""
    cols = {DEV_SETS.get(Path(f).parent.name, f): v["spearman"] for f, v in files.items()}
    cols = {name: cols[name] for name in DEV_SETS.values() if name in cols} | \
           {k: v for k, v in cols.items() if k not in DEV_SETS.values()}
    return cols | {"mean": sum(cols.values()) / max(len(cols), 1)}


def sim_v3_tables(previous: dict, summary: dict) -> list[str]:
    """The objective / pooling table and the whitening table of similarity v3 (all five dev sets + mean)."""
    out = []
    head = "| " + " | ".join(DEV_SETS.values()) + " | mean |"
    rows = ["| run | objective | encoder | pooling " + head + " wall (threads) |", "|---|---|---|---|" + "---|" * 7]
    for run, what in SIM_V3_RUNS.items():
        cfg_file, ev = DIR / f"{run}.config.toml", _json(DIR / f"{run}.json")
        if not cfg_file.is_file() or ev is None:
            continue
        cfg = tomllib.loads(cfg_file.read_text(encoding="utf-8"))
        init = cfg["model"].get("init") or "from scratch"
        encoder = Path(init).name if not init.startswith("runs/") else f"`{init}`"
        cols = {k: round(v, 2) for k, v in dev_columns(ev["files"]).items()}
        row = {"objective": what, "encoder": encoder, "pooling": cfg["model"]["pooling"], "dev": cols,
               "wall_min": wall_minutes(run, previous), "threads": cfg.get("training", {}).get("threads", "?")}
        summary[run] = row
        rows.append(f"| `{run}` | {what} | {encoder} | {row['pooling']} | "
                    + " | ".join(f"{cols.get(k, float('nan')):.2f}" for k in DEV_SETS.values())
                    + f" | **{cols['mean']:.2f}** | {row['wall_min']} min ({row['threads']}) |")
    if len(rows) > 2:
        out.append("\n".join(rows))
    for run in SIM_V3_RUNS:  # research/sim_v3.sh whitening: one table per run it measured
        w = _json(DIR / f"{run}_whitening.json")
        if w:
            out.append(whitening_table(run, w, head, summary))
    return out


def whitening_table(run: str, w: dict, head: str, summary: dict) -> str:
    """The whitening table of one run (research/sim_v3.sh whitening): every setting on the five dev sets."""
    rows = [f"| whitening of `{run}` (fitted on) | sentences " + head, "|---|---|" + "---|" * 6]
    for setting, files in w["scores"].items():
        fit = setting.split("/")[0] if "/" in setting else ("-" if setting == "none" else "--sentences")
        n = w["fits"].get(fit, {}).get("sentences", "") if fit != "-" else ""
        cols = dev_columns(files)
        mark = "**" if setting == w["choice"] else ""
        rows.append(f"| {mark}{setting}{mark} | {n} | " + " | ".join(f"{cols.get(k, float('nan')):.2f}"
                                                                   for k in DEV_SETS.values())
                    + f" | {mark}{cols['mean']:.2f}{mark} |")
    summary[f"{run}_whitening"] = {"choice": w["choice"], "mean_spearman": w["mean_spearman"]}
    return "\n".join(rows)


def main() -> int:
    previous = _json(DIR / "summary.json") or {}
    summary: dict[str, dict] = {}
    rows = ["| run | encoder | head | epochs | attention scale | EMA | F1 nested decode (threshold) | "
            "F1 flat decode (threshold) | wall (1 thread) |", "|---|---|---|---|---|---|---|---|---|"]
    for run in NER_RUNS:
        cfg_file = DIR / f"{run}.config.toml"
        nested, flat = _json(DIR / f"{run}_nested.json"), _json(DIR / f"{run}_flat.json")
        if not cfg_file.is_file() or nested is None or flat is None:
            continue
        cfg = tomllib.loads(cfg_file.read_text(encoding="utf-8"))
        row = {"encoder": encoder_of(cfg), "head": cfg["model"]["head"].upper(), "epochs": cfg["training"]["epochs"],
               "scale": "log512(n)/sqrt(d)" if cfg["model"]["encoder"].get("entropy_invariant_scale") else "1/sqrt(d)",
               "f1_nested": round(100 * nested["f1"], 2), "threshold_nested": nested["threshold"],
               "f1_flat": round(100 * flat["f1"], 2), "threshold_flat": flat["threshold"],
               "wall_min": wall_minutes(run, previous), "ema": cfg["ner"].get("ema_decay", 0.0)}
        summary[run] = row
        rows.append(f"| `{run}` | {row['encoder']} | {row['head']} | {row['epochs']:g} | {row['scale']} | "
                    f"{row['ema'] or '-'} | {row['f1_nested']:.2f} ({row['threshold_nested']:g}) | "
                    f"**{row['f1_flat']:.2f}** ({row['threshold_flat']:g}) | {row['wall_min']} min |")
    print("\n".join(rows))

    rows = ["| run | encoder | head | epochs | EMA | F1 (threshold) | nested-only F1 | wall (1 thread) |",
            "|---|---|---|---|---|---|---|---|"]
    for run in CMEEE_RUNS:
        cfg_file, ev = DIR / f"{run}.config.toml", _json(DIR / f"{run}_nested.json")
        if not cfg_file.is_file() or ev is None:
            continue
        cfg = tomllib.loads(cfg_file.read_text(encoding="utf-8"))
        row = {"encoder": encoder_of(cfg), "head": cfg["model"]["head"].upper(), "epochs": cfg["training"]["epochs"],
               "ema": cfg["ner"].get("ema_decay", 0.0), "f1": round(100 * ev["f1"], 2), "threshold": ev["threshold"],
               "nested_f1": round(100 * ev["nested_f1"], 2), "wall_min": wall_minutes(run, previous)}
        summary[run] = row
        rows.append(f"| `{run}` | {row['encoder']} | {row['head']} | {row['epochs']:g} | {row['ema'] or '-'} | "
                    f"**{row['f1']:.2f}** ({row['threshold']:g}) | {row['nested_f1']:.2f} | {row['wall_min']} min |")
    print("\n" + "\n".join(rows))

    rows = ["| run | encoder | pooling | STS-B dev Spearman (no whitening) | wall (1 thread) |", "|---|---|---|---|---|"]
    for run in SIM_RUNS:
        cfg_file, ev = DIR / f"{run}.config.toml", _json(DIR / f"{run}.json")
        if not cfg_file.is_file() or ev is None:
            continue
        cfg = tomllib.loads(cfg_file.read_text(encoding="utf-8"))
        row = {"encoder": encoder_of(cfg), "pooling": cfg["model"]["pooling"],
               "spearman": round(ev["spearman_mean"], 2), "wall_min": wall_minutes(run, previous)}
        summary[run] = row
        rows.append(f"| `{run}` | {row['encoder']} | {row['pooling']} | {row['spearman']:.2f} | {row['wall_min']} min |")
    print("\n" + "\n".join(rows))

    rows = ["| run | what | parameters | tokens/s (median, 1 thread) | s/step (64 x 128 tokens) |", "|---|---|---|---|---|"]
    for run, what in SPEED_RUNS.items():
        speed, train = _json(DIR / f"{run}.speed.json"), _json(DIR / f"{run}.train.json")
        if speed is None or train is None:
            continue
        enc = train["config"]["model"]["encoder"]
        row = {"what": what, "layers": enc["num_hidden_layers"], "hidden": enc["hidden_size"],
               "tokens_per_s": speed["median_tokens_per_s"], "step_s": speed["median_step_s"]}
        summary[run] = row
        rows.append(f"| `{run}` | {what} | {row['layers']} x {row['hidden']} | {row['tokens_per_s']:,} | "
                    f"{row['step_s']:.2f} |")
    print("\n" + "\n".join(rows))

    rows = ["| objective | steps (equal CPU time) | tokens seen | held-out (last eval) | CLUENER dev F1, flat (threshold) |",
            "|---|---|---|---|---|"]
    for run, what in OBJECTIVE_RUNS.items():
        train, ner = _json(DIR / f"{run}.train.json"), _json(DIR / f"ner_{run}_flat.json")
        if train is None:
            continue
        ev = train.get("last_eval") or {}
        held = (f"disc acc {100 * ev['disc_accuracy']:.1f} %, gen acc {100 * ev['gen_accuracy']:.1f} %"
                if "disc_accuracy" in ev else f"acc {100 * ev.get('accuracy', 0):.1f} %, ppl {ev.get('perplexity', 0):.1f}")
        row = {"what": what, "steps": train["step"], "tokens": train["step"] * 64 * 128, "heldout": ev,
               "f1": round(100 * ner["f1"], 2) if ner else None, "threshold": ner["threshold"] if ner else None}
        summary[run] = row
        f1 = f"**{row['f1']:.2f}** ({row['threshold']:g})" if ner else "-"
        rows.append(f"| {what} (`{run}`) | {row['steps']} | {row['tokens'] / 1e6:.1f} M | {held} | {f1} |")
    print("\n" + "\n".join(rows))

    rows = ["| run | data | recipe | dev F1 (decode, threshold) | nested-only F1 | wall (1 thread) |",
            "|---|---|---|---|---|---|"]
    for run, (data, what) in NER_V3_RUNS.items():
        ev = _json(DIR / f"{run}_flat.json") or _json(DIR / f"{run}_nested.json")
        if ev is None:
            continue
        row = {"data": data, "what": what, "f1": round(100 * ev["f1"], 2), "decode": ev.get("decode"),
               "threshold": ev["threshold"],
               "nested_f1": round(100 * ev["nested_f1"], 2) if data == "CMeEE" else None,
               "wall_min": wall_minutes(run, previous)}
        summary[run] = row
        nested = f"{row['nested_f1']:.2f}" if row["nested_f1"] is not None else "-"
        rows.append(f"| `{run}` | {data} | {what} | "
                    f"**{row['f1']:.2f}** ({row['decode']}, {row['threshold']:g}) | "
                    f"{nested} | {'-' if row['wall_min'] is None else str(row['wall_min']) + ' min'} |")
    print("\n" + "\n".join(rows))

    for table in sim_v3_tables(previous, summary):
        print("\n" + table)

    length = _json(DIR / "length_generalisation.json")
    if length:
        joins = length["joins"]
        some = next(iter(length["models"].values()))["by_join"]
        rows = ["| model | attention scale | " + " | ".join(
                    f"{n} joined (~{some[str(n)]['mean_tokens']:.0f} tokens)" for n in joins) + " |",
                "|---|---|" + "---|" * len(joins)]
        for path, m in length["models"].items():
            scale = "log512(n)/sqrt(d)" if m["entropy_invariant_scale"] else "1/sqrt(d)"
            rows.append(f"| `{path}` | {scale} | " + " | ".join(f"{m['by_join'][str(n)]['f1']:.2f}" for n in joins) + " |")
        summary["length_generalisation"] = {p: {n: m["by_join"][str(n)]["f1"] for n in joins}
                                            for p, m in length["models"].items()}
        print("\n" + "\n".join(rows))
    (DIR / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
