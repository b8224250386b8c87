"""``ropenlp score ... --ray``: the same bytes as the local run, on a real one-node Ray cluster.

One cluster for the session (``ray_cluster``); every Ray run here is compared with the local run of
the same command. The window plan (which records each actor reads) is checked against the local
reader without Ray.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from service.score import ScoreOptions, score
from service.score.inputs import Source
from service.score.options import plan_for
from tests.service.test_score import cli, read_jsonl, texts

WINDOW = 16  # small: several windows per file, a last one part-full


def mixed_jsonl(path: Path, n: int = 70) -> Path:
    """Good records, malformed lines (JSON, UTF-8, not an object, empty, missing field), a text over
    max_chars, a line over the reader's byte limit, and a last line without a newline."""
    good = texts(n, seed=3)
    lines: list[bytes] = []
    for k, t in enumerate(good):
        lines.append(json.dumps({"text": t, "id": f"r{k}"}, ensure_ascii=False).encode())
        bad = {
            5: b"{not json",
            11: b"\xff\xfe not utf-8",
            17: b"[1, 2]",
            23: b"",
            29: json.dumps({"txt": "no text field"}).encode(),
            35: json.dumps({"text": "长" * 10_001, "id": "too-many-chars"}).encode(),
            41: b'{"text": "' + b"x" * (4 << 20) + b'"}',  # over the 4 MiB line limit
            47: json.dumps({"text": "   ", "id": "blank"}).encode(),
        }.get(k)
        if bad is not None:
            lines.append(bad)
    path.write_bytes(b"\n".join(lines))  # no newline after the last line
    return path


def ray_cli(ray, *args: str) -> None:
    """The CLI as a user runs it, joining the session's cluster (``--ray ADDRESS``)."""
    address = ray.get_runtime_context().gcs_address
    p = cli(*args, "--ray", address, "--progress", "none", timeout=240)
    assert p.returncode == 0, p.stderr.decode()[-3000:]


def local_cli(*args: str) -> None:
    p = cli(*args, "--progress", "none", timeout=120)
    assert p.returncode == 0, p.stderr.decode()[-3000:]


# --------------------------------------------------------------------------------------------
# The window plan, without Ray
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ("jsonl", b'\xef\xbb\xbf{"text": "a"}\n\n{"text": "b"}\r\n{x\n{"text": "c"}'),
        ("jsonl", b'{"text": "a"}\n{"text": "b"}\n'),
        ("text", b"a\nb\n\nc\nd\ne\nf\n"),
        ("tsv", b"a\tb\nx\ty\n\nz\tw\nq\n"),
        ("csv", b'a,b\n"x\ny",z\n1,2\n\n"3",4\n5,"6\n7\n8"\n9,10'),
    ],
)
@pytest.mark.parametrize("done", [0, 2, 3])
def test_windows_start_where_the_local_reader_reads_them(engine, tmp_path, fmt, body, done) -> None:
    """Each window, read from its offset by a fresh reader (as an actor does), holds the records the
    local reader gives for those record numbers, resumed runs (``done`` records written) included."""
    from service.score.ray import windows

    task = "similarity" if fmt in ("tsv", "csv") else "ner"
    src = tmp_path / f"in.{ {'text': 'txt'}.get(fmt, fmt)}"
    src.write_bytes(body)
    o = ScoreOptions(task=task, input=str(src), output=str(tmp_path / "o.jsonl"))
    plan = plan_for(o, engine)
    source = Source(o, plan, engine.limits)
    want = [(r.line, r.end, r.value, r.error and r.error.error_type) for r in source.records()]
    source.close()
    done = min(done, len(want))
    start = (0, 0) if done == 0 else (lambda r: (r.end, r.end_line))(_nth(o, plan, engine, done - 1))
    plan_ = Source(o, plan, engine.limits)
    got_windows = list(windows(plan_, start, done, 2))
    plan_.close()
    assert [w.count for w in got_windows][:1] == ([min(2 - done % 2, len(want) - done)] if done < len(want) else [])
    got = []
    for w in got_windows:
        s = Source(o, plan, engine.limits)
        got += [(r.line, r.end, r.value, r.error and r.error.error_type)
                for r in itertools.islice(s.records((w.offset, w.line)), w.count)]  # fmt: skip
        s.close()
    assert got == want[done:]
    firsts = list(itertools.accumulate([done, *[w.count for w in got_windows]]))[:-1]
    assert [w.first for w in got_windows] == firsts


def _nth(o, plan, engine, k):
    s = Source(o, plan, engine.limits)
    try:
        return next(itertools.islice(s.records(), k, None))
    finally:
        s.close()


# --------------------------------------------------------------------------------------------
# On Ray: the same bytes
# --------------------------------------------------------------------------------------------


def test_ner_on_ray_writes_the_local_bytes(ray_cluster, tiny_bundle, tmp_path) -> None:
    """The acceptance command: `ropenlp score ner -i in.jsonl -o out.jsonl --ray --actors 2` on good,
    malformed and over-long lines writes the bytes of the local command."""
    src = mixed_jsonl(tmp_path / "in.jsonl")
    args = ["ner", "-i", str(src), "--bundle", str(tiny_bundle), "--id-field", "id", "--window", str(WINDOW)]
    local_cli(*args, "-o", str(tmp_path / "local.jsonl"))
    ray_cli(ray_cluster, *args, "-o", str(tmp_path / "ray.jsonl"), "--actors", "2")
    local, remote = (tmp_path / "local.jsonl").read_bytes(), (tmp_path / "ray.jsonl").read_bytes()
    assert remote == local
    rows = read_jsonl(tmp_path / "ray.jsonl")
    errors = {r.get("error_type") for r in rows}
    assert {"invalid_json", "invalid_utf8", "invalid_record", "empty_line", "missing_field", "text_too_long",
            "line_too_long", "empty_input", None} <= errors  # fmt: skip
    state = [json.loads(x) for x in (tmp_path / "ray.jsonl.state").read_text().splitlines()]
    assert state[-1]["event"] == "complete"


def test_similarity_csv_and_the_cli_in_process(ray_cluster, tiny_bundle, tmp_path) -> None:
    """Pairs from a CSV with a header and quoted multi-line fields; `--ray` (no address) in-process
    joins the running cluster."""
    from typer.testing import CliRunner

    from ropenlp.cli import app

    a, b = texts(50, seed=5), texts(50, seed=6)
    rows = ["a,b,key"] + [f'"{x}\n{y}",{y},k{k}' if k % 9 == 4 else f"{x},{y},k{k}" for k, (x, y) in enumerate(zip(a, b))]
    rows[20], rows[33] = ",,k-empty", "only-one-column"
    src = tmp_path / "pairs.csv"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["score", "similarity", "-i", str(src), "--bundle", str(tiny_bundle), "--id-field", "key",
            "--window", str(WINDOW), "--progress", "none"]  # fmt: skip
    local_cli(*args[1:], "-o", str(tmp_path / "local.jsonl"))
    r = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "ray.jsonl"), "--ray", "--actors", "2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_embed_parquet_in_and_out(ray_cluster, tiny_bundle, engine, tmp_path) -> None:
    """Parquet in; the Ray run's Parquet output, read back, is the local run's JSONL (vectors within
    1e-6, a list<float32> column; error rows with a null vector)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = texts(60, seed=7)
    values[3], values[30] = None, "长" * 10_001
    pq.write_table(pa.table({"text": values, "uid": list(range(100, 160))}), tmp_path / "in.parquet", row_group_size=25)
    common = dict(task="embed", input=str(tmp_path / "in.parquet"), id_field="uid", window=WINDOW)
    score(engine, ScoreOptions(output=str(tmp_path / "local.jsonl"), **common))
    from service.score.ray import RayOptions, score_ray
    from service.settings import Settings

    s = Settings.from_env(environ={}, bundle=tiny_bundle)
    summary = score_ray(s, ScoreOptions(output=str(tmp_path / "ray.parquet"), **common), RayOptions(actors=2))
    assert summary.complete and summary.records == 60
    table = pq.read_table(tmp_path / "ray.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.float32())
    local = read_jsonl(tmp_path / "local.jsonl")
    assert len(local) == table.num_rows
    for want, record, vector, line in zip(local, table["record"].to_pylist(), table["vector"].to_pylist(),
                                          table["line"].to_pylist()):  # fmt: skip
        got = json.loads(record)
        want_vector = want.pop("vector", None)
        assert got == want and line == want["line"]
        if want_vector is None:
            assert vector is None and "error_type" in want
        else:
            np.testing.assert_allclose(vector, want_vector, rtol=0, atol=1e-6)
    assert {r["error_type"] for r in local if "error_type" in r} == {"invalid_request", "text_too_long"}


def test_a_stopped_ray_run_resumes_to_the_local_bytes(ray_cluster, tiny_bundle, engine, tmp_path) -> None:
    """A run stopped part-way (here by --max-errors; Ctrl-C and kill -9 leave the same state file)
    goes on with --resume after the windows already written, which are not scored again."""
    from service.score import TooManyErrors
    from service.score.ray import RayOptions, score_ray
    from service.settings import Settings

    src = mixed_jsonl(tmp_path / "in.jsonl")
    common = dict(task="ner", input=str(src), id_field="id", window=WINDOW, fsync_interval=0)
    score(engine, ScoreOptions(output=str(tmp_path / "local.jsonl"), **common))
    s = Settings.from_env(environ={}, bundle=tiny_bundle)
    out = tmp_path / "ray.jsonl"
    with pytest.raises(TooManyErrors) as stopped:
        score_ray(s, ScoreOptions(output=str(out), max_errors=2, **common), RayOptions(actors=1))
    done = stopped.value.summary.records
    assert 0 < done < 78 and done % WINDOW == 0
    summary = score_ray(s, ScoreOptions(output=str(out), resume=True, **common), RayOptions(actors=2))
    assert summary.resumed_from == done and summary.new_records == summary.records - done
    assert out.read_bytes() == (tmp_path / "local.jsonl").read_bytes()


# --------------------------------------------------------------------------------------------
# Without Ray: the flags, Parquet locally
# --------------------------------------------------------------------------------------------


def test_ray_flags(tiny_bundle, tmp_path) -> None:
    """`--ray` takes an optional address; --actors needs --ray; stdin cannot be read by actors."""
    from service.cli import RAY_LOCAL, with_ray_default

    for given, want in [
        (["ner", "--ray"], ["ner", "--ray", RAY_LOCAL]),
        (["ner", "--ray", "--actors", "2"], ["ner", "--ray", RAY_LOCAL, "--actors", "2"]),
        (["ner", "--ray", "auto", "--actors", "2"], ["ner", "--ray", "auto", "--actors", "2"]),
        (["ner", "--", "--ray"], ["ner", "--", "--ray"]),
    ]:
        assert with_ray_default(given) == want
    src = mixed_jsonl(tmp_path / "in.jsonl", n=5)
    p = cli("ner", "-i", str(src), "-o", str(tmp_path / "o.jsonl"), "--bundle", str(tiny_bundle), "--actors", "2")
    assert p.returncode == 2 and b"--actors and --threads-per-actor are for --ray" in p.stderr
    p = cli("ner", "-i", "-", "-f", "jsonl", "-o", str(tmp_path / "o.jsonl"), "--bundle", str(tiny_bundle), "--ray",
            input=b'{"text": "a"}\n')  # fmt: skip
    assert p.returncode == 2 and b"not stdin" in p.stderr


def test_parquet_output_locally(engine, tmp_path) -> None:
    """A local Parquet output holds the JSONL run's objects; it is not resumable (rerun with --overwrite)."""
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet needs pyarrow: pip install 'ropenlp[parquet]'")
    from service.score import ResumeError

    src = mixed_jsonl(tmp_path / "in.jsonl", n=30)
    common = dict(task="ner", input=str(src), id_field="id", window=WINDOW)
    score(engine, ScoreOptions(output=str(tmp_path / "o.jsonl"), **common))
    score(engine, ScoreOptions(output=str(tmp_path / "o.parquet"), **common))
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column_names == ["line", "error_type", "record"]  # no vector column for NER
    assert [json.loads(r) for r in table["record"].to_pylist()] == read_jsonl(tmp_path / "o.jsonl")
    assert not (tmp_path / "o.parquet.partial").exists() and not (tmp_path / "o.parquet.state").exists()
    with pytest.raises(ResumeError, match="--overwrite"):
        score(engine, ScoreOptions(output=str(tmp_path / "o.parquet"), resume=True, **common))
