"""The serving side of every task kind, by name: the registry (:mod:`service.tasks.base`) and the
built-in kinds, which register themselves on import. Core, the HTTP routes and ``ropenlp score`` ask
this registry; none of them names a task.

    kind          operations (HTTP route, `ropenlp score` command)
    ner           ner
    similarity    similarity (pairs | query + candidates), embed, rerank

A new kind: ``docs/adding-a-task.md``.
"""

from service.tasks import ner, similarity  # noqa: F401  (the built-in kinds register themselves)
from service.tasks.base import OPERATIONS, TASKS, Body, Operation, ScoreSpec, Task, register, scorable

__all__ = ["OPERATIONS", "TASKS", "Body", "Operation", "ScoreSpec", "Task", "register", "scorable"]
