"""The serving side of a task kind: what the registry holds (``service.tasks`` lists the built-in kinds).

A kind is a :class:`Task` subclass (one per manifest task kind, bound to one engine: its spec, the
tokenizer, the limits) and the :class:`Operation` s it offers. An operation is what a client asks
for: ``POST /<name>`` over HTTP and ``ropenlp score <name>`` on files. It

* takes a typed query (``query``: a pydantic model, the HTTP body; the Python API and the CLI build
  it with ``model_construct`` and leave every check to ``prepare``, so both get the same errors),
* ``prepare`` s it into a :class:`~service.jobs.Job` (validate, tokenize; rows + plain state),
* ``finish`` es the job from its rows' outputs (after the task's ``postprocess`` of each batch),
* ``render`` s the result as its response model (what HTTP serialises and documents), and
  ``records`` splits it into one JSON object per input item (what ``ropenlp score`` writes):
  one shape for both.

Adding a kind: ``docs/adding-a-task.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from models.bundle import TASK_SPECS, TaskSpec
from models.text import Tokenizer
from service.errors import ServiceError
from service.jobs import Job, Limits, Seq

WARM_UP_TEXT = "北京 warm-up 测试"


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer field of a query: JSON has one kind of number, and 75.0 is the integer 75 (JSON Schema
# agrees); 75.5, "75" and true are still refused (the models are strict).
Integer = Annotated[int, BeforeValidator(_integral)]


class Body(BaseModel):
    """Base of the query models: unknown fields and loose types are refused (HTTP 422).

    The model parses loosely on purpose (``prepare`` checks every value, with the same errors for HTTP
    and ``ropenlp score``); :meth:`contract` states exactly what ``prepare`` accepts: the OpenAPI
    schema of the request body (``service.http.contract``).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    @classmethod
    def contract(cls, limits: Limits) -> dict[str, Any]:
        """The JSON schema of the queries ``prepare`` accepts under ``limits``: every item count, text
        length, range, enum and either/or shape it enforces. Default: the model's own schema."""
        return cls.model_json_schema()


def constrained(model: type[BaseModel], fields: Mapping[str, Any], *, required: Sequence[str] = (),
                title: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The JSON schema of ``model`` with the types of ``fields`` replaced (by constrained ones, or by
    ``None``: the field must be null or absent); descriptions and defaults kept, ``required`` ones made
    required. The tasks' :meth:`Body.contract` s are built from it."""
    replaced = {}
    for name, annotation in fields.items():
        info = model.model_fields[name]
        default = ... if name in required else info.default
        replaced[name] = (annotation, Field(default, description=info.description))
    schema = create_model(model.__name__, __base__=model, **replaced).model_json_schema()
    return schema | ({"title": title} if title else {})


def text_type(limits: Limits) -> Any:
    """A text as ``service.validate.check_text`` accepts it."""
    return Annotated[str, Field(max_length=limits.max_chars)]


def items_type(item: Any, limits: Limits) -> Any:
    """A list as ``service.validate.check_items`` accepts it: 1 to ``max_items`` items."""
    return Annotated[list[item], Field(min_length=1, max_length=limits.max_items)]


@dataclass(frozen=True)
class ScoreSpec:
    """How ``ropenlp score <operation>`` reads records and writes lines."""

    items: str  # the query field a window of records fills ("texts", "pairs")
    fields: tuple[str, ...] = ("text",)  # what one record holds: one text, or a pair ("a", "b")
    flags: tuple[str, ...] = ()  # the score options it takes, named as the query's fields ("threshold", ...)
    vectors: bool = False  # each record's result carries a "vector" (--npy / --vectors)
    help: str = ""


class Operation:
    """One thing a client can ask of a task (see the module docstring). Subclasses set the class
    attributes and implement ``prepare``, ``finish``, ``render`` and, when scorable, ``records``."""

    name: ClassVar[str]  # the route /<name> and `ropenlp score <name>`
    task: ClassVar[str]  # the kind whose graph runs its rows
    query: ClassVar[type[BaseModel]]
    response: ClassVar[Any]  # a response model, or a union of them
    summary: ClassVar[str] = ""
    errors: ClassVar[tuple[type[ServiceError], ...]] = ()  # beyond the errors of every inference route
    score: ClassVar[ScoreSpec | None] = None  # None: not offered by `ropenlp score`

    def prepare(self, task: Task, query: BaseModel) -> Job:
        raise NotImplementedError

    def finish(self, task: Task, job: Job, outputs: list[Any]) -> Any:
        raise NotImplementedError

    def render(self, result: Any) -> BaseModel:
        raise NotImplementedError

    def records(self, result: Any, limits: Limits) -> list[dict[str, Any] | ServiceError]:
        """One JSON object (or a per-item error) per input item of the query, for ``ropenlp score``."""
        raise NotImplementedError

    def check_flags(self, flags: Mapping[str, Any], limits: Limits) -> None:
        """Check ``ropenlp score`` flags before any record is read; raise ValueError naming the flag."""

    def score_query(self, values: list[Any], flags: Mapping[str, Any]) -> BaseModel:
        """The query for one window of records' values."""
        assert self.score is not None
        return self.query.model_construct(**{self.score.items: values}, **flags)


class Task:
    """A task kind bound to one engine: its manifest spec, the tokenizer, the limits, its settings.

    Subclasses set ``kind`` (a kind registered with :func:`models.bundle.register_task_spec`) and
    ``operations``, and implement ``postprocess`` (one batch's graph output -> one value per row, on
    the inference thread) and ``info``."""

    kind: ClassVar[str]
    operations: ClassVar[tuple[Operation, ...]]
    option_keys: ClassVar[tuple[str, ...]] = ()  # settings it reads (service.settings.Settings fields)
    warm_up: ClassVar[tuple[tuple[str, dict[str, Any]], ...]] = ()  # (operation, query fields) run at start

    def __init__(self, spec: TaskSpec, tokenizer: Tokenizer, limits: Limits, options: Mapping[str, Any]):
        self.spec, self.tokenizer, self.limits = spec, tokenizer, limits

    def postprocess(self, outputs: np.ndarray, seqs: Sequence[Seq]) -> list[Any]:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {**self.spec.settings(), "metrics": self.spec.metrics}

    def settings(self) -> dict[str, Any]:
        """The effective values of the settings it reads (a resumed `score` run must see the same)."""
        return {}

    @property
    def vector_dim(self) -> int | None:
        """The length of the vectors its operations' records carry (``ScoreSpec.vectors``), if any."""
        return None


TASKS: dict[str, type[Task]] = {}
OPERATIONS: dict[str, Operation] = {}


def register(task: type[Task]) -> type[Task]:
    """Add a task kind's serving side (and its operations) to the registry; usable as a class decorator."""
    if task.kind not in TASK_SPECS:
        raise ValueError(
            f"{task.__name__}: no manifest spec for kind {task.kind!r} (register it with "
            "models.bundle.register_task_spec first)"
        )
    for op in task.operations:
        if op.task != task.kind:
            raise ValueError(f"operation {op.name!r} runs on {op.task!r}, not on {task.kind!r}")
        if OPERATIONS.get(op.name, op) is not op and OPERATIONS[op.name].task != task.kind:
            raise ValueError(f"operation {op.name!r} is registered already by {OPERATIONS[op.name].task!r}")
    TASKS[task.kind] = task
    for op in task.operations:
        OPERATIONS[op.name] = op
    return task


def scorable() -> dict[str, Operation]:
    """The operations ``ropenlp score`` offers, by name."""
    return {name: op for name, op in OPERATIONS.items() if op.score is not None}
