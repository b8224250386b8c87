"""``ropenlp score`` locally against ``--ray`` with 1 and 2 actors on the same file. Not a test.

    nice -n 10 python bench/scale_out.py [--lines 40000] [--bundle default] [--task ner] [--rounds 1]
                                         [--json bench/results/scale_out.json]

Writes ``--lines`` JSONL lines (sentences as ``bench/cli.py`` makes them: ``../shared/data`` when it
exists, else synthetic; a fixed seed), with one malformed line in 1000. Then runs, as subprocesses, per
round and alternating: the local command, ``--ray --actors 1`` and ``--ray --actors 2`` (each
``--ray`` run starts and stops its own local cluster, as a user's first run does; ``--ray-auto``
instead joins a cluster already running, so the start-up is not counted). Reports records/s from the
wall clock and from the run's own summary, and checks every output is byte for byte the local one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script
from bench.cli import sentences  # noqa: E402
from bench.common import machine_info  # noqa: E402


def write_input(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for k, t in enumerate(lines):
            f.write("{not json\n" if k % 1000 == 999 else json.dumps({"id": k, "text": t}, ensure_ascii=False) + "\n")


def run(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    m = re.search(r"this run: (\d+) in ([\d.]+) s", p.stderr)
    return {"wall_s": round(wall, 2), "run_s": float(m.group(2)) if m else None}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=40_000)
    ap.add_argument("--bundle", default="default")
    ap.add_argument("--task", default="ner")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-chars", type=int, default=48)
    ap.add_argument("--ray-auto", action="store_true", help="join a running cluster (--ray auto)")
    ap.add_argument("--variants", default="local,ray1,ray2", help="a subset of local,ray1,ray2")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="scale_out_"))
    texts, origin = sentences(a.lines, seed=0, max_chars=a.max_chars, source="auto")
    src = tmp / "in.jsonl"
    write_input(src, texts)
    base = [sys.executable, "-m", "ropenlp", "score", a.task, "-i", str(src), "--id-field", "id",
            "--bundle", a.bundle, "--progress", "none", "--overwrite"]  # fmt: skip
    ray = ["--ray", "auto"] if a.ray_auto else ["--ray"]
    every = {
        "local": ("local", []),
        "ray1": ("ray, 1 actor", [*ray, "--actors", "1"]),
        "ray2": ("ray, 2 actors", [*ray, "--actors", "2"]),
    }
    variants = dict(every[v] for v in a.variants.split(","))
    times: dict[str, list[dict]] = {name: [] for name in variants}
    digests: dict[str, str] = {}
    for _ in range(a.rounds):
        for name, extra in variants.items():
            out = tmp / f"{name.replace(' ', '_').replace(',', '')}.jsonl"
            times[name].append(run([*base, "-o", str(out), *extra]))
            digests[name] = hashlib.sha256(out.read_bytes()).hexdigest()
    result = {
        "lines": a.lines, "task": a.task, "bundle": a.bundle, "texts": origin, "max_chars": a.max_chars,
        "rounds": a.rounds, "ray_start_counted": not a.ray_auto, "machine": machine_info(),
        "same_bytes": len(set(digests.values())) == 1, "sha256": digests,
        "variants": {
            name: {
                "wall_s": statistics.median(t["wall_s"] for t in ts),
                "records_per_s_wall": round(a.lines / statistics.median(t["wall_s"] for t in ts), 1),
                "records_per_s_run": round(a.lines / statistics.median(t["run_s"] for t in ts), 1),
            }
            for name, ts in times.items()
        },
    }  # fmt: skip
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
