"""Batch scoring of large files: ``ropenlp score OPERATION`` (``ner``, ``similarity``, ``embed``: any operation of
``service.tasks`` with a ``ScoreSpec``; the CLI shim is in ``service.cli``).

What it does, in one paragraph: records are read from the input as a stream, a window of ``window``
records at a time (memory is bounded by the window, never by the file). The valid records of a window
become ONE core job (``Engine.prepare`` of the operation's query: the same tokenizer, validation, NER
windows over long texts, similarity truncation as the HTTP server) run by
``Engine.execute`` (length-sorted batches within the ``batch_tokens`` budget). The next window is read
and tokenized on a second thread while the model runs. Results are written in input order, one output
line per input record, error lines included.

Output (JSONL, one line per input record, in input order; a record's fields are the operation's
``records``, the items of its HTTP response)::

    {"line": 7, "id": "a1", "entities": [{"start": 0, "end": 2, "label": "LOC", "text": "北京", "score": 3.1}]}
    {"line": 8, "id": "a2", "score": 0.83, "truncated": false}                   # similarity
    {"line": 9, "vector": [0.01, ...], "truncated": false}                         # embed
    {"line": 10, "row": 9, "truncated": false}                                     # embed with --npy
    {"line": 11, "id": "a4", "error": "no field 'text'", "error_type": "missing_field", "field": "text"}

``line`` is the 1-based line of the input where the record starts (a CSV header is line 1), ``id`` the
value of ``--id-field`` when given. ``truncated``: the text (or a text of the pair) was cut to the
model's ``max_length`` tokens (NER never truncates: long texts are windowed).

The modules, in the order a run uses them:

* :mod:`~service.score.options`: :class:`ScoreOptions`, checked and completed into a plan;
* :mod:`~service.score.inputs`: the input's records (JSONL, CSV, TSV, plain text), record errors;
* :mod:`~service.score.chunk`: :func:`~service.score.chunk.score_chunk`, THE scoring function (records ->
  output rows), called by the local loop and by the Ray actors alike;
* :mod:`~service.score.run`: :func:`score`, the windowed scoring loop;
* :mod:`~service.score.ray`: ``--ray``, the same windows on Ray Data actors (docs/scaling.md);
* :mod:`~service.score.outputs`: output lines, the ``.npy``, the state file, checkpoints (durability);
* :mod:`~service.score.resume`: ``--resume`` (fingerprint, repair of a torn output, where to go on);
* :mod:`~service.score.progress` and :mod:`~service.score.errors`: what a run reports, why it stops.
"""

from service.score.errors import (
    InputOutputError,
    Interrupted,
    ResumeError,
    ScoreError,
    Stopped,
    TooManyErrors,
    UsageError,
)
from service.score.options import ScoreOptions
from service.score.progress import Progress, Summary, make_progress
from service.score.run import score

__all__ = [
    "InputOutputError",
    "Interrupted",
    "Progress",
    "ResumeError",
    "ScoreError",
    "ScoreOptions",
    "Stopped",
    "Summary",
    "TooManyErrors",
    "UsageError",
    "make_progress",
    "score",
]
