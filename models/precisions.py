"""The precision registry: every graph variant a bundle may carry, in one table.

Each entry says how the variant is built (the builder in :mod:`export.convert`, by name, so this
module stays torch- and onnx-free), what its outputs are checked against at export time (PyTorch,
or another variant), and which execution providers prefer it. Everything else derives from this
table: the manifest's allowed precisions, the runtime's choice per provider, the export CLI's
choices and the ``precision`` setting.

``int8`` is static: its activation scales are constants of the graph, calibrated at export on texts
drawn from the task's training data, so a text's numbers do not depend on its batch neighbours.
``int8-dynamic`` (ONNX Runtime's ``DynamicQuantizeLinear``: one activation scale per tensor per call,
over every row and the padding of the batch) is kept as an explicit choice only: a text's scores follow
its neighbours, so a CPU runtime prefers fp32 to it, and bundles written before format 3 call their
(dynamic) int8 graphs ``int8-dynamic`` when read (``models.bundle``).

Adding a precision is one entry here plus its builder function in ``export/convert.py``
(``docs/adding-a-task.md`` has the checklist; ``tests/models/test_precisions.py`` checks that every
entry has a builder and a reference that is built before it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

PYTORCH = "pytorch"  # the reference of the reference variant

# Calibration of the static int8 variant (export.quantize_static): how activation ranges are set, and the
# seeded draw of training texts they are measured on. Percentile is the default, chosen on the trained
# models' dev metrics (export.quantize_static says why; the figures are in docs/models.md "Static int8").
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)
DEFAULT_CALIBRATION_METHOD: CalibrationMethod = "percentile"
DEFAULT_CALIBRATION_SIZE = 256
DEFAULT_CALIBRATION_SEED = 0


@dataclass(frozen=True)
class PrecisionKind:
    name: str
    summary: str  # how it is built, for humans (CLI help, model cards, docs)
    reference: str  # what export checks it against: PYTORCH or the name of a variant listed before it
    builder: str | None  # function of export.convert that builds it from its reference (None: the reference itself)
    rank: dict[str, int] = field(default_factory=dict)  # provider -> preference, lower first; absent = last
    gate: bool = False  # True: a difference above the export tolerance fails the export (else recorded)
    source: Literal["reference", "export"] = "reference"  # the builder's input: its reference, or the raw export
    calibrated: bool = False  # the builder needs calibration texts (drawn from the task's training data)
    batch_invariant: bool = True  # a text's outputs do not depend on the batch it rides in (checked at export)


PRECISIONS: dict[str, PrecisionKind] = {
    p.name: p
    for p in (
        PrecisionKind(
            "fp32", "ONNX Runtime's transformer optimiser on the exported graph (CPU and GPU)",
            reference=PYTORCH, builder=None, rank={"cpu": 1, "cuda": 1}, gate=True,
        ),
        PrecisionKind(
            "fp16", "the encoder in fp16, the task head in fp32 (GPU)",
            reference="fp32", builder="build_fp16", rank={"cpu": 2, "cuda": 0},
        ),
        PrecisionKind(
            "int8", "static int8: int8 MatMul weights, activation scales calibrated on training texts (CPU)",
            reference="fp32", builder="build_int8", rank={"cpu": 0, "cuda": 2}, source="export",
            calibrated=True,
        ),
        PrecisionKind(
            "int8-dynamic", "dynamic int8: int8 MatMul weights, activation scales per call: batch-dependent (CPU)",
            reference="fp32", builder="build_int8_dynamic", rank={"cpu": 3, "cuda": 3}, batch_invariant=False,
        ),
    )
}  # fmt: skip
NAMES: tuple[str, ...] = tuple(PRECISIONS)
REFERENCE = next(p.name for p in PRECISIONS.values() if p.reference == PYTORCH)  # what the others are checked against
# The type of a precision name in the manifest and the settings (pydantic reads the choices from it).
Precision = Literal[NAMES]  # type: ignore[valid-type]


def precision(name: str) -> PrecisionKind:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}: choose from {', '.join(NAMES)}") from None


def preference(provider: str) -> tuple[str, ...]:
    """Precisions in the order ``provider`` prefers them (unknown providers: as the CPU)."""
    key = provider if any(provider in p.rank for p in PRECISIONS.values()) else "cpu"
    return tuple(sorted(NAMES, key=lambda n: (PRECISIONS[n].rank.get(key, len(NAMES)), NAMES.index(n))))


def build_order(names: tuple[str, ...] | list[str]) -> list[str]:
    """``names`` plus the references they need, each after its reference (registry order otherwise)."""
    need: list[str] = []

    def add(name: str) -> None:
        p = precision(name)
        if p.reference != PYTORCH:
            add(p.reference)
        if name not in need:
            need.append(name)

    for n in names:
        add(n)
    return sorted(need, key=lambda n: (_depth(n), NAMES.index(n)))


def _depth(name: str) -> int:
    ref = PRECISIONS[name].reference
    return 0 if ref == PYTORCH else 1 + _depth(ref)


def describe() -> str:
    """One line per precision: for CLI help."""
    return "; ".join(f"{p.name}: {p.summary}" for p in PRECISIONS.values())
