"""The export side of every task kind, by name: the registry (:mod:`export.tasks.base`) and the built-in
kinds, which register themselves on import (``ner``: GlobalPointer scores; ``similarity``: sentence
vectors). ``export.onnx.export_bundle`` asks this registry; it names no task. A new kind:
``docs/adding-a-task.md``."""

from export.tasks import ner, similarity  # noqa: F401  (the built-in kinds register themselves)
from export.tasks.base import EXPORTERS, TaskExporter, register_exporter

__all__ = ["EXPORTERS", "TaskExporter", "register_exporter"]
