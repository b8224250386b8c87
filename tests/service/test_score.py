"""``ropenlp score``: formats, bad records, --max-errors, kill -9 + --resume, torn lines, pipes.

Generated files, the tiny bundle; results are compared with the engine called directly on the same
texts (nothing hard-coded). In-process runs call :func:`service.score.score` (the function behind the
CLI); the CLI itself runs as a subprocess where a user's view matters (exit codes, kill, pipes).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from service.score import InputOutputError, ResumeError, ScoreOptions, UsageError, score

REPO = Path(__file__).resolve().parents[2]
CHARS = "我爱北京天安门上海的人中国张三李四工作在是了有和大学银行公司"


def texts(n: int, seed: int = 0, lo: int = 2, hi: int = 12) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(CHARS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run(engine, tmp_path: Path, task: str, src: Path, **kw):
    out = tmp_path / f"{src.stem}.{task}.out.jsonl"
    summary = score(engine, ScoreOptions(task=task, input=str(src), output=str(out), **kw))
    return read_jsonl(out), summary


def same_entities(got: list[dict], want) -> None:
    assert [(e["start"], e["end"], e["label"], e["text"]) for e in got] == [
        (e.start, e.end, e.label, e.text) for e in want
    ]
    np.testing.assert_allclose([e["score"] for e in got], [e.score for e in want], rtol=0, atol=1e-5)


def same_output(got: bytes, want: bytes) -> None:
    """Line for line the same records, ids, errors and entities; scores equal up to float rounding
    (a run resumed in the middle of a window batches that window's rest differently)."""
    if got == want:
        return
    g, w = (got.decode().splitlines(), want.decode().splitlines())
    assert len(g) == len(w)
    for a, b in zip(map(json.loads, g), map(json.loads, w)):
        ea, eb = a.pop("entities", []), b.pop("entities", [])
        assert a == b
        assert [(e["start"], e["end"], e["label"]) for e in ea] == [
            (e["start"], e["end"], e["label"]) for e in eb
        ]
        np.testing.assert_allclose([e["score"] for e in ea], [e["score"] for e in eb], atol=1e-5)


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ROPENLP_")} | {"PYTHONPATH": str(REPO)}


def cli(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ropenlp", "score", *args], cwd=REPO, env=cli_env(),
                          input=input, capture_output=True, timeout=timeout, check=False)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Formats and bad records
# --------------------------------------------------------------------------------------------


def test_jsonl_custom_fields_bad_records_in_the_middle(engine, tmp_path) -> None:
    good = texts(30, seed=1)
    lines = [json.dumps({"uid": f"u{k}", "body": t}, ensure_ascii=False).encode() for k, t in enumerate(good)]
    bad = {
        4: b'{"uid": "u4", "body": "unterminated',  # invalid JSON
        7: json.dumps({"uid": "u7", "title": "x"}).encode(),  # missing field
        10: json.dumps({"uid": "u10", "body": "  "}).encode(),  # empty text
        13: json.dumps({"uid": "u13", "body": "北" * 10_001}).encode(),  # too long (max_chars 10000)
        16: b'{"uid": "u16", "body": "\xff\xfe"}',  # invalid UTF-8
        19: b"[1, 2]",  # not an object
        22: b"",  # blank line
        25: json.dumps({"uid": "u25", "body": 42}).encode(),  # not a string
    }
    for k, raw in bad.items():
        lines[k] = raw
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")

    out, summary = run(engine, tmp_path, "ner", src, text_field="body", id_field="uid", window=8)

    assert [o["line"] for o in out] == list(range(1, 31)) and summary.records == 30
    types = {k: out[k].get("error_type") for k in bad}
    assert types == {4: "invalid_json", 7: "missing_field", 10: "empty_input", 13: "text_too_long",
                     16: "invalid_utf8", 19: "invalid_record", 22: "empty_line", 25: "invalid_request"}  # fmt: skip
    assert out[7]["id"] == "u7" and out[7]["field"] == "body" and out[13]["limit"] == 10_000
    assert summary.errors == len(bad)
    ok = [k for k in range(30) if k not in bad]
    want = engine.run("ner", texts=[good[k] for k in ok]).entities
    for k, ents in zip(ok, want):
        assert out[k]["id"] == f"u{k}" and "error" not in out[k]
        same_entities(out[k]["entities"], ents)


def test_csv_with_header_similarity(engine, tmp_path) -> None:
    a, b = texts(12, seed=2), texts(12, seed=3)
    a[5] = "张三，李四\n在北京"  # a comma and a newline inside a quoted field: one record, two lines
    src = tmp_path / "pairs.csv"
    with open(src, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "left", "right"])
        for k in range(12):
            w.writerow([f"k{k}", a[k], b[k]] if k != 8 else [f"k{k}", a[k]])  # row 8: no "right"
    out, _ = run(engine, tmp_path, "similarity", src, a_field="left", b_field="right", id_field="key")

    assert [o["id"] for o in out] == [f"k{k}" for k in range(12)]
    assert out[5]["line"] == 7 and out[6]["line"] == 9  # header is line 1; record 5 spans lines 7-8
    assert out[8]["error_type"] == "missing_field" and out[8]["field"] == "right"
    ok = [k for k in range(12) if k != 8]
    want = engine.run("similarity", pairs=[[a[k], b[k]] for k in ok])
    np.testing.assert_allclose([out[k]["score"] for k in ok], want.scores, atol=1e-5)
    assert [out[k]["truncated"] for k in ok] == want.truncated


def test_tsv_by_column_index_embed_with_npy(engine, tmp_path) -> None:
    t = texts(10, seed=4)
    rows = [f"id{k}\tx\t{t[k]}" for k in range(10)]
    rows[3] = "id3\tonly-two-columns"
    src = tmp_path / "in.tsv"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    npy = tmp_path / "vectors.npy"
    out, _ = run(engine, tmp_path, "embed", src, header=False, text_field="2", id_field="0", npy=str(npy))

    assert [o["id"] for o in out] == [f"id{k}" for k in range(10)]
    assert out[3]["error_type"] == "missing_field" and "vector" not in out[0] and out[4]["row"] == 4
    vectors = np.load(npy)
    ok = [k for k in range(10) if k != 3]
    assert vectors.shape == (10, engine.manifest.tasks["similarity"].dim) and vectors.dtype == np.float32
    assert np.isnan(vectors[3]).all()
    np.testing.assert_allclose(vectors[ok], engine.run("embed", texts=[t[k] for k in ok]).vectors, atol=1e-5)


def test_plain_text_and_a_missing_column(engine, tmp_path) -> None:
    t = texts(9, seed=5)
    t[4] = ""  # an empty line: an empty text
    src = tmp_path / "in.txt"
    src.write_text("\n".join(t) + "\n", encoding="utf-8")
    out, _ = run(engine, tmp_path, "embed", src, vectors=True)
    assert out[4] == {"line": 5, "error": "text is empty", "error_type": "empty_input", "field": "text"}
    ok = [k for k in range(9) if k != 4]
    np.testing.assert_allclose(
        [out[k]["vector"] for k in ok], engine.run("embed", texts=[t[k] for k in ok]).vectors, atol=1e-5
    )
    with pytest.raises(UsageError, match="no column 'body'"):
        tsv = tmp_path / "h.tsv"
        tsv.write_text("id\ttext\n1\t北京\n", encoding="utf-8")
        run(engine, tmp_path, "ner", tsv, text_field="body")


def test_refusals(engine, tmp_path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("北京\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    opts = {"task": "ner", "input": str(src), "output": str(out)}
    with pytest.raises(UsageError, match="--resume .* or --overwrite"):
        score(engine, ScoreOptions(**opts))
    with pytest.raises(ResumeError, match="state file"):
        score(engine, ScoreOptions(**opts, resume=True))
    with pytest.raises(ResumeError, match="stdout cannot be resumed"):
        score(engine, ScoreOptions(task="ner", input=str(src), output="-", resume=True))
    with pytest.raises(UsageError, match="--format"):
        score(engine, ScoreOptions(task="ner", input=str(tmp_path / "in.data"), output="-"))
    with pytest.raises(InputOutputError, match="cannot read the input"):
        score(engine, ScoreOptions(task="ner", input=str(tmp_path / "missing.txt"), output="-"))
    assert out.read_text() == "precious\n"


# --------------------------------------------------------------------------------------------
# Resume: a torn tail, a checkpoint, a changed input; kill -9 for real
# --------------------------------------------------------------------------------------------


def big_input(path: Path, n: int) -> list[str]:
    t = texts(n, seed=6, lo=2, hi=16)
    path.write_text(
        "".join(json.dumps({"n": k, "text": s}, ensure_ascii=False) + "\n" for k, s in enumerate(t))
    )
    return t


@pytest.mark.parametrize("checkpoints", [False, True], ids=["no-checkpoint", "checkpoints"])
@pytest.mark.parametrize("lines_written", [150, 160, 300], ids=["mid-window", "between-windows", "all-lines"])
def test_resume_after_a_crash(engine, tmp_path, checkpoints, lines_written) -> None:
    src = tmp_path / "in.jsonl"
    big_input(src, 300)
    kw = {"task": "ner", "input": str(src), "threshold": 0.5, "id_field": "n", "window": 32}
    ref = tmp_path / "ref.jsonl"
    score(engine, ScoreOptions(output=str(ref), **kw))

    # Recreate what a crash leaves: the lines written so far, a torn line after them, and the state
    # file as it was then (the start entry only, or with the checkpoints written by then), torn too.
    out = tmp_path / "out.jsonl"
    score(engine, ScoreOptions(output=str(out), fsync_interval=0 if checkpoints else 1e9, **kw))
    full, state = ref.read_bytes(), out.with_name("out.jsonl.state")
    cut = len(b"".join(full.splitlines(keepends=True)[:lines_written]))
    out.write_bytes(full[:cut] + b'{"line": 151, "id": 1')
    entries = [json.loads(e) for e in state.read_text().splitlines()]
    kept = [
        e for e in entries if e["event"] == "start" or (e["event"] == "checkpoint" and e["out_bytes"] < cut)
    ]
    assert (len(kept) > 2) is checkpoints
    state.write_text("".join(json.dumps(e) + "\n" for e in kept) + '{"event": "checkpo')

    summary = score(engine, ScoreOptions(output=str(out), resume=True, **kw))
    if lines_written % 32 == 0:  # windows realign: the same batches, the same bytes
        assert out.read_bytes() == full
    same_output(out.read_bytes(), full)  # every line exactly once, in order
    assert summary.resumed_from == lines_written and summary.new_records == 300 - lines_written
    last = [json.loads(e) for e in state.read_text().splitlines() if '"checkpoint"' in e][-1]
    assert (last["records"], last["in_offset"]) == (300, src.stat().st_size)  # the position of the last line
    done = out.read_bytes()
    again = score(engine, ScoreOptions(output=str(out), resume=True, **kw))  # complete: nothing to do
    assert again.new_records == 0 and out.read_bytes() == done


def test_resume_embed_with_npy_behind_the_output(engine, tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    big_input(src, 100)
    kw = {"task": "embed", "input": str(src), "window": 16, "id_field": "n"}
    ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
    score(engine, ScoreOptions(output=str(ref), npy=str(tmp_path / "ref.npy"), **kw))
    npy = tmp_path / "out.npy"
    score(engine, ScoreOptions(output=str(out), npy=str(npy), fsync_interval=0, **kw))

    # A crash after 64 lines, when the .npy had 48 rows on disk and the state its checkpoint at 32.
    lines = ref.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:64]))
    dim = engine.manifest.tasks["similarity"].dim
    with open(npy, "r+b") as f:
        f.truncate(128 + 48 * 4 * dim + 10)  # and 10 bytes of the next row
    state = out.with_name("out.jsonl.state")
    entries = [json.loads(e) for e in state.read_text().splitlines()]
    state.write_text("".join(json.dumps(e) + "\n" for e in entries if e.get("records", 0) <= 32))

    summary = score(engine, ScoreOptions(output=str(out), npy=str(npy), resume=True, **kw))
    assert summary.resumed_from == 48  # the .npy decides: rows and lines stay one to one
    assert out.read_bytes() == ref.read_bytes()
    np.testing.assert_array_equal(np.load(npy, mmap_mode="r"), np.load(tmp_path / "ref.npy"))


def test_resume_refuses_other_arguments_or_input(engine, tmp_path) -> None:
    src = tmp_path / "in.jsonl"
    big_input(src, 40)
    out = tmp_path / "out.jsonl"
    kw = {"task": "ner", "input": str(src), "output": str(out), "window": 16}
    score(engine, ScoreOptions(**kw, max_errors=None))
    with pytest.raises(ResumeError, match=r"threshold: None -> 0\.5"):
        score(engine, ScoreOptions(**kw, resume=True, threshold=0.5))
    with open(src, "a", encoding="utf-8") as f:
        f.write('{"text": "北京"}\n')
    with pytest.raises(ResumeError, match=r"input\.size"):
        score(engine, ScoreOptions(**kw, resume=True))


def test_sigterm_then_kill_9_then_resume_gives_the_uninterrupted_output(
    engine, tmp_path, tiny_bundle
) -> None:
    n = 10_000
    src = tmp_path / "in.jsonl"
    big_input(src, n)
    ref = tmp_path / "ref.jsonl"
    score(
        engine,
        ScoreOptions(task="ner", input=str(src), output=str(ref), threshold=0.5, id_field="n", window=64),
    )

    out = tmp_path / "out.jsonl"
    env = cli_env()
    cmd = [sys.executable, "-m", "ropenlp", "score", "ner", "-i", str(src), "-o", str(out), "--bundle",
           str(tiny_bundle), "--id-field", "n", "--threshold", "0.5", "--window", "64", "--fsync-interval", "0.05",
           "--progress", "none"]  # fmt: skip

    def interrupt(args: list[str], sig: int, at_lines: int) -> int:
        """Start the CLI, send ``sig`` once the output holds ``at_lines`` lines; the lines then."""
        proc = subprocess.Popen(
            [*cmd, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 30
        while not (out.exists() and out.read_bytes().count(b"\n") >= at_lines):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == (130 if sig == signal.SIGTERM else -signal.SIGKILL), err.decode()
        lines = out.read_bytes().count(b"\n")
        assert at_lines <= lines < n
        return lines

    termed = interrupt([], signal.SIGTERM, 1_000)  # exit 130, checkpointed
    killed = interrupt(["--resume"], signal.SIGKILL, termed + 2_000)  # no chance to clean up
    with open(out, "ab") as f:
        f.write(b'{"line": 99999, "entit')  # and a torn last line on top

    p = subprocess.run([*cmd, "--resume"], cwd=REPO, env=env, capture_output=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr.decode()
    assert out.read_bytes() == ref.read_bytes()  # every input line exactly once, in order, same bytes
    assert b"resumed after" in p.stderr and b"torn" in p.stderr
    print(
        f"\nSIGTERM after {termed}, kill -9 after {killed} of {n} lines; then {p.stderr.decode().splitlines()[-1]}"
    )


# --------------------------------------------------------------------------------------------
# The CLI: exit codes, pipes
# --------------------------------------------------------------------------------------------


def test_max_errors_exit_code_then_resume(engine, tmp_path, tiny_bundle) -> None:
    t = texts(60, seed=7)
    lines = [s if k % 10 != 3 else "" for k, s in enumerate(t)]  # 6 empty lines: 6 errors
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    common = ["ner", "-i", str(src), "-o", str(out), "--bundle", str(tiny_bundle), "--window", "10"]
    p = cli(*common, "--max-errors", "2")
    assert p.returncode == 1, p.stderr.decode()
    assert b"more than --max-errors 2" in p.stderr and b"stopped" in p.stderr
    assert len(read_jsonl(out)) == 30  # stopped after the window holding the 3rd error (line 24)
    p = cli(*common, "--max-errors", "10", "--resume")
    assert p.returncode == 0, p.stderr.decode()
    got = read_jsonl(out)
    assert [o["line"] for o in got] == list(range(1, 61)) and sum("error" in o for o in got) == 6
    p = cli(*common, "--max-errors", "10")  # the output exists now
    assert p.returncode == 2 and b"--overwrite" in p.stderr


def test_stdin_to_stdout(engine, tmp_path, tiny_bundle) -> None:
    t = texts(50, seed=8)
    data = ("\n".join(t) + "\n").encode()
    p = cli("ner", "-i", "-", "-o", "-", "--format", "text", "--bundle", str(tiny_bundle), input=data)
    assert p.returncode == 0, p.stderr.decode()
    assert b"done: 50 records, 0 error lines" in p.stderr
    out = [json.loads(line) for line in p.stdout.decode().splitlines()]
    assert [o["line"] for o in out] == list(range(1, 51))
    for o, ents in zip(out, engine.run("ner", texts=t).entities):
        same_entities(o["entities"], ents)
    p = cli("ner", "-i", "-", "-o", "-", "--bundle", str(tiny_bundle), input=data)
    assert p.returncode == 2 and b"--format" in p.stderr


def test_decode_flat_like_threshold(engine, tmp_path, tiny_bundle) -> None:
    """--decode goes where --threshold goes: checked in the plan, passed to core, in the fingerprint."""
    t = texts(40, seed=9)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(t) + "\n", encoding="utf-8")
    out, _ = run(engine, tmp_path, "ner", src, decode="flat", window=16)
    flat, nested = engine.run("ner", texts=t, decode="flat").entities, engine.run("ner", texts=t).entities
    assert sum(map(len, flat)) < sum(map(len, nested))  # the random tiny model nests: something dropped
    for o, ents in zip(out, flat):
        same_entities(o["entities"], ents)
    with pytest.raises(UsageError, match="--decode must be one of nested, flat, got 'bogus'"):
        score(engine, ScoreOptions(task="ner", input=str(src), output="-", decode="bogus"))
    with pytest.raises(UsageError, match="--decode is for `score ner`"):
        score(engine, ScoreOptions(task="embed", input=str(src), output="-", decode="flat"))
    kw = {"task": "ner", "input": str(src), "output": str(tmp_path / "out.jsonl"), "window": 16}
    score(engine, ScoreOptions(**kw))
    with pytest.raises(ResumeError, match=r"decode: None -> 'flat'"):
        score(engine, ScoreOptions(**kw, resume=True, decode="flat"))
    p = cli("ner", "-i", str(src), "-o", "-", "--bundle", str(tiny_bundle), "--decode", "flat")
    assert p.returncode == 0, p.stderr.decode()
    for o, ents in zip(map(json.loads, p.stdout.decode().splitlines()), flat):
        same_entities(o["entities"], ents)


def test_score_never_imports_torch() -> None:
    code = (
        "import service.score, sys; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
