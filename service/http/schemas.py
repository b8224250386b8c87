"""The response models of the HTTP edge's own routes (errors, health, readiness, info).

The inference routes' query and response models belong to their task (:mod:`service.tasks`): the
same models render the ``ropenlp score`` lines.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, for humans")
    error_type: str = Field(description="stable snake_case name of the error class")
    field: str | None = Field(None, description="the offending request field, e.g. texts[3]")
    limit: float | None = Field(None, description="the limit that was exceeded (a count, a length or a bound)")


class Health(BaseModel):
    status: str = Field(description='"alive": the process answers and its inference worker makes progress')


class Ready(BaseModel):
    status: str = Field(description='"ready"')
    bundle: str
    provider: str
    precision: dict[str, str] = Field(description="task -> the graph variant in use")
    warm_up_ms: float


class Info(BaseModel):
    name: str
    format_version: int
    provider: str
    precision: dict[str, str] = Field(description="task -> the graph variant in use")
    normalize: dict[str, bool] = Field(
        default_factory=dict, description="normalisation before the tokenizer (width, t2s): offsets stay the input's"
    )
    tasks: dict[str, dict[str, Any]] = Field(description="per task: its settings, limits on long texts, metrics")
    provenance: dict[str, Any]
    limits: dict[str, Any]
    version: str
    ready: bool
    auth: bool = Field(description="inference routes need an API key")
