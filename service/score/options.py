"""The options of one scoring run, and :func:`plan_for`: the options checked against each other and the
bundle, and completed (the input format, the fields to read, what each output line carries)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.core import Engine
from service.score.errors import ResumeError, UsageError
from service.tasks import Operation, scorable

Format = Literal["jsonl", "csv", "tsv", "text", "parquet"]
EXTENSIONS: dict[str, Format] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "text",
    ".parquet": "parquet",
}  # fmt: skip
OutputFormat = Literal["jsonl", "parquet"]
STATE_SUFFIX = ".state"


@dataclass(frozen=True)
class ScoreOptions:
    """One scoring run. Paths are ``"-"`` for stdin / stdout. Field names are JSON keys, CSV/TSV
    column names (files with a header) or 0-based column indices (``"2"``; files without one)."""

    task: str  # the operation: a scorable one of service.tasks (ner, similarity, embed, ...)
    input: str
    output: str
    format: Format | None = None  # None: from the input's extension
    text_field: str | None = None  # one text per record (ner / embed); default "text" (column 0 without a header)
    a_field: str | None = None  # pairs (similarity); default "a" / "b" (columns 0 / 1 without a header)
    b_field: str | None = None
    id_field: str | None = None  # copied to every output line as "id"
    header: bool | None = None  # csv / tsv: first line names the columns (default True)
    threshold: float | None = None  # ner; default: the bundle's
    decode: str | None = None  # ner: "nested" | "flat"; default: the bundle's
    window: int = 4096  # records read, sorted by length and batched together
    max_errors: int | None = None  # stop (exit 1) once more error lines than this were written
    resume: bool = False
    overwrite: bool = False
    npy: str | None = None  # embed: vectors also as a float32 .npy
    vectors: bool | None = None  # embed: vectors in the JSONL lines (default: unless --npy)
    fsync_interval: float = 5.0  # seconds between checkpoints (0: after every window)

    @property
    def state_path(self) -> Path:
        return Path(self.output + STATE_SUFFIX)

    @property
    def streamed(self) -> bool:
        """Output to stdout or to a non-regular file (a pipe, /dev/null): no state file, no resume."""
        return self.output == "-" or (os.path.exists(self.output) and not os.path.isfile(self.output))


@dataclass(frozen=True)
class Plan:
    """Options checked and completed: the format, the fields to read, what each line carries."""

    format: Format
    fields: tuple[str, ...]  # ("text",) or ("a", "b") as the user named them
    id_field: str | None
    header: bool
    vectors: bool  # the vector in each JSON line
    output_format: OutputFormat = "jsonl"  # from the output's extension: *.parquet, else JSON lines


def plan_for(o: ScoreOptions, engine: Engine) -> Plan:
    """Check the options (:class:`UsageError` naming what does not fit) and complete them."""
    if o.window < 1:
        raise UsageError(f"--window must be >= 1, got {o.window}")
    if o.max_errors is not None and o.max_errors < 0:
        raise UsageError(f"--max-errors must be >= 0, got {o.max_errors}")
    if not (o.fsync_interval >= 0 and math.isfinite(o.fsync_interval)):
        raise UsageError(f"--fsync-interval must be a number of seconds >= 0, got {o.fsync_interval}")
    if o.streamed and o.resume:
        raise ResumeError(
            f"--resume needs a regular output file: {'stdout' if o.output == '-' else o.output} cannot be "
            "resumed (give --output FILE)"
        )
    if o.resume and o.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pick one")
    op = operation(o.task)
    if not op.score.vectors and (o.npy is not None or o.vectors is not None):
        raise UsageError(f"--npy and --vectors are for {_offered_by(lambda s: s.vectors)}")
    flags = {"threshold": o.threshold, "decode": o.decode}
    for flag, value in flags.items():
        if value is not None and flag not in op.score.flags:
            raise UsageError(f"--{flag} is for {_offered_by(lambda s, f=flag: f in s.flags)}")
    try:
        op.check_flags({k: v for k, v in flags.items() if v is not None}, engine.limits)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if op.task not in engine.tasks:
        raise UsageError(
            f"the bundle {engine.manifest.name!r} has no {op.task} model (has: {', '.join(engine.tasks)})"
        )
    fmt = o.format if o.format is not None else _format_of(o.input)
    if fmt == "parquet" and o.input == "-":
        raise UsageError("Parquet cannot be read from stdin: give --input FILE.parquet")
    out_fmt: OutputFormat = "parquet" if Path(o.output).suffix.lower() == ".parquet" else "jsonl"
    if out_fmt == "parquet" and o.resume:
        raise ResumeError("a Parquet output cannot be resumed: rerun the whole input with --overwrite")
    if out_fmt == "parquet" and o.vectors:
        raise UsageError("a Parquet output holds the vectors in its vector column: drop --vectors")
    header = fmt in ("csv", "tsv") if o.header is None else o.header
    if o.header and fmt in ("jsonl", "text", "parquet"):
        raise UsageError(f"--header is for csv / tsv input, not {fmt}")
    indexed = fmt in ("csv", "tsv") and not header  # fields are column indices
    pairs = len(op.score.fields) == 2
    if pairs:
        if o.text_field is not None:
            raise UsageError(f"`score {o.task}` reads pairs: use --a-field / --b-field, not --text-field")
        if fmt == "text":
            raise UsageError("plain text holds one text per line: give pairs as tsv, csv or jsonl")
        a, b = op.score.fields
        fields = (o.a_field or ("0" if indexed else a), o.b_field or ("1" if indexed else b))
    else:
        if o.a_field is not None or o.b_field is not None:
            raise UsageError(f"`score {o.task}` reads one text per record: use --text-field")
        fields = (o.text_field or ("0" if indexed else op.score.fields[0]),)
    if fmt == "text" and (o.text_field is not None or o.id_field is not None):
        raise UsageError("plain text has no fields: each line is the text, its line number the id")
    if indexed:
        for f in (*fields, *([o.id_field] if o.id_field is not None else [])):
            if not f.isdigit():
                raise UsageError(f"without a header, columns are 0-based indices: got {f!r}")
    vectors = o.npy is None if o.vectors is None else o.vectors
    if op.score.vectors and not vectors and o.npy is None and out_fmt == "jsonl":
        raise UsageError("--no-vectors without --npy would write no vectors at all")
    if out_fmt == "parquet":
        vectors = False  # the vector column holds them
    return Plan(format=fmt, fields=fields, id_field=o.id_field, header=header, vectors=vectors,
                output_format=out_fmt)  # fmt: skip


def operation(name: str) -> Operation:
    """The scorable operation ``name`` (``ropenlp score NAME``); UsageError listing them otherwise."""
    ops = scorable()
    if name not in ops:
        raise UsageError(f"`score` cannot run {name!r}: choose from {', '.join(ops)}")
    return ops[name]


def _offered_by(has) -> str:
    """'`score ner`' or '`score a` / `score b`': the operations whose ScoreSpec satisfies ``has``."""
    return " / ".join(f"`score {name}`" for name, op in scorable().items() if has(op.score))


def _format_of(path: str) -> Format:
    if path == "-":
        raise UsageError("cannot tell the format of stdin: pass --format jsonl|csv|tsv|text")
    fmt = EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of {path} from its extension "
            f"(known: {', '.join(EXTENSIONS)}): pass --format jsonl|csv|tsv|text|parquet"
        )
    return fmt
