"""Throughput and memory of ``ropenlp score`` on a large generated file. Not a test.

    python bench/cli.py --bundle DIR [--task ner] [--lines 200000] [--json out.json] [-- SCORE ARGS...]
    python bench/cli.py --bundle DIR -- --threshold 0.5 --intra-op-threads 2     # extra flags for score

Writes ``--lines`` short lines (JSONL ``{"id": k, "text": ...}``, or ``--format text``): sentences
from ``../shared/data`` (news titles and the unlabeled corpus, cut to ``--max-chars``) when that
directory exists, else synthetic Chinese-like text; a fixed seed either way. Then runs
``ropenlp score`` as a subprocess on it, once per size in ``--sizes`` (default: a quarter of the file,
then all of it): the child's peak RSS comes from ``wait4`` (the kernel's own high-water mark; /proc is
also polled for a time series), records/s from the child's summary (the scoring loop) and from the
wall clock (start-up included). Bounded memory shows as the same peak RSS for a 4x larger input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script
from bench.common import split_passthrough, write_json  # noqa: E402

log = logging.getLogger("bench.cli")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHARED_FILES = ["thucnews_titles/titles.txt", "corpus_zh/*.txt"]
# Common characters for synthetic text (frequency-ordered head of modern Chinese usage) and punctuation.
COMMON = (
    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
    "而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性"
    "好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第"
    "向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管"
)
PUNCT = "，，，。、！？"


def sentences(n: int, *, seed: int, max_chars: int, source: str) -> tuple[list[str], str]:
    """``n`` short lines and where they came from."""
    rng = random.Random(seed)
    pool: list[str] = []
    if source in ("auto", "shared") and SHARED.is_dir():
        for pattern in SHARED_FILES:
            for f in sorted(SHARED.glob(pattern)):
                for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                    line = line.strip()
                    if line and line.lower() != "text":
                        pool.append(line[: rng.randint(max(4, max_chars // 4), max_chars)])
    if pool:
        rng.shuffle(pool)
        return [pool[k % len(pool)] for k in range(n)], f"{len(pool)} lines of {SHARED} (cycled)"
    if source == "shared":
        raise SystemExit(f"no sentences under {SHARED}")
    out = []
    for _ in range(n):
        k = rng.randint(4, max_chars)
        text = "".join(rng.choice(COMMON) for _ in range(k))
        cut = rng.randint(1, k - 1)
        out.append(text[:cut] + rng.choice(PUNCT) + text[cut:] + "。")
    return out, f"synthetic (seed {seed})"


def write_input(path: Path, lines: list[str], fmt: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        if fmt == "jsonl":
            f.writelines(
                json.dumps({"id": k, "text": t}, ensure_ascii=False) + "\n" for k, t in enumerate(lines)
            )
        else:
            f.writelines(t + "\n" for t in lines)


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_score(cmd: list[str], *, poll_s: float = 0.25) -> dict:
    """Run the child; its exit code, wall time, peak RSS (wait4) and an RSS series (/proc)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    series: list[tuple[float, int]] = []
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        kb = rss_kb(proc.pid)
        if kb is not None:
            series.append((round(time.perf_counter() - t0, 2), kb))
        time.sleep(poll_s)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode("utf-8", "replace")
    proc.stderr.close()
    return {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kilobytes
        "rss_series_mb": [(t, round(kb / 1024, 1)) for t, kb in series[:: max(1, len(series) // 20)]],
        "stderr_tail": stderr.strip().splitlines()[-3:],
    }


def main(argv: list[str] | None = None) -> dict:
    argv, extra = split_passthrough(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--task", choices=["ner", "embed"], default="ner")
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--sizes", default="0.25,1", help="fractions of --lines to run on, one child each")
    p.add_argument("--format", choices=["jsonl", "text"], default="jsonl")
    p.add_argument("--max-chars", type=int, default=40)
    p.add_argument("--source", choices=["auto", "shared", "synthetic"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep the files here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        all_lines, origin = sentences(
            args.lines, seed=args.seed, max_chars=args.max_chars, source=args.source
        )
        runs = []
        for frac in (float(x) for x in args.sizes.split(",")):
            n = max(1, int(args.lines * frac))
            src = work / f"in-{n}.{args.format if args.format == 'jsonl' else 'txt'}"
            write_input(src, all_lines[:n], args.format)
            out = work / f"out-{n}.jsonl"
            cmd = [sys.executable, "-m", "ropenlp", "score", args.task, "-i", str(src), "-o", str(out),
                   "--overwrite", "--bundle", str(args.bundle), "--progress", "none", *extra]  # fmt: skip
            log.info("scoring %d lines (%.1f MB) ...", n, src.stat().st_size / 1e6)
            r = run_score(cmd)
            state = Path(str(out) + ".state")
            done = (
                [json.loads(x) for x in state.read_text().splitlines() if '"complete"' in x]
                if state.exists()
                else []
            )
            summary = done[-1] if done else {}
            runs.append({
                "lines": n, "input_mb": round(src.stat().st_size / 1e6, 2),
                "output_mb": round(out.stat().st_size / 1e6, 2) if out.exists() else None,
                "records": summary.get("records"), "errors": summary.get("errors"),
                "score_s": summary.get("seconds"), "records_per_s": summary.get("records_per_s"),
                "records_per_s_wall": round(n / r["wall_s"], 1), **r,
            })  # fmt: skip
            for f in (src, out, state):
                f.unlink(missing_ok=True)

    result = {
        "bench": "ropenlp score",
        "bundle": str(args.bundle),
        "task": args.task,
        "format": args.format,
        "text": origin,
        "max_chars": args.max_chars,
        "score_args": extra,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "runs": runs,
    }
    print(
        f"\nropenlp score {args.task} on {args.bundle} ({origin}, lines <= {args.max_chars} chars, {' '.join(extra)})"
    )
    print(f"{'lines':>9}{'input MB':>10}{'records/s':>11}{'(wall)':>9}{'peak RSS MB':>13}{'exit':>6}")
    for r in runs:
        print(f"{r['lines']:>9}{r['input_mb']:>10.1f}{r['records_per_s'] or 0:>11.0f}"
              f"{r['records_per_s_wall']:>9.0f}{r['peak_rss_mb']:>13.1f}{r['exit_code']:>6}")  # fmt: skip
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
