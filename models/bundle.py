"""The model bundle: one self-describing directory that ``export`` writes and ``service`` reads.

Torch-free (pydantic + stdlib). Layout::

    BUNDLE/
      bundle.json                 the manifest below (format_version, tasks, provenance, file hashes)
      tokenizer.json              one tokenizer shared by every task of the bundle
      <prefix>.<precision>.onnx   per task, one graph per precision variant (ner.int8.onnx: GlobalPointer
                                  scores; sim.fp32.onnx: whitened, L2-normalised sentence vectors)
      MODEL_CARD.md               written from the manifest (models.card); not hashed

``tasks`` maps a name to its spec, a union discriminated by ``kind`` over the registered kinds
(:func:`register_task_spec`; the name is the kind). Format 1 held each task under a top-level key of
its name: still read. Format 3 added ``GraphSpec.quantization`` (how an int8 graph was quantized and
calibrated, and whether its results depend on the batch); formats 1 and 2 wrote no such record and
their int8 graphs were all dynamic: they are read as ``int8-dynamic``. A task may carry several precision variants of its graph (the precision registry,
``models.precisions``); the runtime picks one for its execution provider with ``TaskSpec.pick``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from models.normalize import Normalize
from models.precisions import CalibrationMethod, Precision, preference

FORMAT_VERSION = 3  # what this ropenlp writes: tasks under "tasks", keyed by name; graphs' quantization
READS = (1, 2, 3)  # what it reads: version 1 holds each task under a top-level key of its name ("ner", ...)
LEGACY_INT8 = "int8-dynamic"  # what an "int8" graph of a format 1 / 2 bundle is (dynamic quantization)
MANIFEST = "bundle.json"


class BundleError(ValueError):
    """A bundle directory that cannot be served: the message names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Calibration(_Strict):
    """Where a static int8 graph's activation ranges come from."""

    source: str = Field(description="the texts' origin, e.g. 'cluener/train.json'")
    texts: int = Field(ge=1, description="texts drawn (random.Random(seed).sample of the distinct texts)")
    seed: int
    rows: int = Field(ge=1, description="model rows run: every window of every text, each its own unpadded batch")
    tokens: int
    method: CalibrationMethod
    percentile: float | None = None


class Quantization(_Strict):
    """How an int8 graph was built, measured at export."""

    mode: Literal["static", "dynamic"]
    batch_invariant: bool = Field(description="a text's outputs are the same alone and in any batch")
    batch_dependence: float | None = Field(
        None, description="largest |output alone - output in a padded batch| over the export's check rows")
    format: Literal["qdq", "qoperator"]
    activations: str  # e.g. "uint8 per-tensor, calibrated" / "uint8 per-tensor, scale per call"
    weights: str  # e.g. "int8 per-channel"
    matmuls_int8: int
    matmuls_fp32: int  # the task head's and the attention products (activation x activation)
    calibration: Calibration | None = None  # static only
    source: str | None = None  # what was quantized (the raw export, a dequantized graph, ...)


class GraphSpec(_Strict):
    file: str
    precision: Precision
    opset: int
    inputs: list[str]
    outputs: list[str]
    parity: dict[str, float | int | str] = Field(default_factory=dict)  # measured at export
    quantization: Quantization | None = None  # int8 graphs (format 3 on)


class TaskSpec(_Strict):
    """What every task of a bundle has: its kind (the registry's name), graphs per precision, window length,
    metrics. A kind subclasses it with its own fields and a ``kind: Literal["name"] = "name"``, and
    registers with :func:`register_task_spec`."""

    limits: ClassVar[tuple[str, ...]] = ()  # what its results are bounded by, for the model card

    kind: str
    graphs: dict[Precision, GraphSpec]
    max_length: int = Field(gt=2, description="tokens per window, [CLS] and [SEP] included")
    metrics: dict[str, float | int | str | dict] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_match(self):
        for key, g in self.graphs.items():
            if g.precision != key:
                raise ValueError(f"graphs[{key!r}] declares precision {g.precision!r}")
        if not self.graphs:
            raise ValueError("a task needs at least one graph")
        return self

    def pick(self, provider: str, precision: str | None = None) -> GraphSpec:
        """The graph to run: the requested precision, else the provider's preferred one present."""
        if precision is not None:
            if precision not in self.graphs:
                raise BundleError(f"no {precision} graph in this bundle (has: {', '.join(self.graphs)})")
            return self.graphs[precision]
        for p in preference(provider):
            if p in self.graphs:
                return self.graphs[p]
        raise BundleError("no graph")  # unreachable: validated non-empty

    def settings(self) -> dict[str, object]:
        """The task's own settings (everything but graphs and metrics): for model cards and /info."""
        return self.model_dump(mode="json", exclude={"kind", "graphs", "metrics"})


class NerTask(TaskSpec):
    limits = (
        "Long texts are cut into overlapping windows of max_length tokens (stride apart) and the entities "
        "merged; an entity longer than a window cannot be found.",
        "Span scores are not probabilities: the threshold was tuned on the development data.",
    )

    kind: Literal["ner"] = "ner"
    labels: list[str] = Field(min_length=1)
    head: Literal["gp", "egp"]
    threshold: float = 0.0
    stride: int = Field(gt=0, description="tokens between the starts of consecutive windows")
    decode: Literal["nested", "flat"] = Field(
        "nested", description="flat: only non-overlapping spans (optional: older manifests mean nested)"
    )

    @model_validator(mode="after")
    def _stride_fits(self):
        if self.stride > self.max_length - 2:
            raise ValueError(f"stride {self.stride} exceeds max_length - 2 = {self.max_length - 2}")
        return self


class SimilarityTask(TaskSpec):
    limits = (
        "Texts longer than max_length tokens are truncated (every result says so); scores of truncated "
        "texts describe their beginning only.",
        "Cosine scores rank pairs; they are not calibrated probabilities of paraphrase.",
    )

    kind: Literal["similarity"] = "similarity"
    pooling: Literal["cls", "mean", "first-last-avg", "linear"]
    dim: int = Field(gt=0, description="dimension of the whitened, normalised vectors")
    whitening: bool


class Dataset(_Strict):
    name: str
    terms: str


class Provenance(_Strict):
    base_checkpoint: str | None = None
    training_data: list[Dataset] = Field(default_factory=list)
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    ropenlp_version: str = "unknown"
    notes: str | None = None


class Manifest(_Strict):
    format_version: int
    name: str
    tokenizer: str = "tokenizer.json"
    lowercase: bool = True
    normalize: Normalize = Field(
        default_factory=Normalize,
        description="offset-preserving normalisation before the tokenizer (models.normalize); the same "
        "in training, evaluation and serving. Absent: none",
    )
    tasks: dict[str, TaskSpec] = Field(description="task name -> spec; the spec's kind is the name")
    provenance: Provenance = Field(default_factory=Provenance)
    files: dict[str, str] = Field(default_factory=dict, description="file name -> SHA-256 hex")

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, raw):
        """Format 1 (and keyword construction): each task under a top-level key of its kind's name. Formats 1
        and 2: their int8 graphs are dynamic (``LEGACY_INT8``)."""
        if isinstance(raw, dict) and raw.get("format_version") in (1, 2):
            raw = _legacy_int8(raw)
        if not isinstance(raw, dict) or not any(k in TASK_SPECS for k in raw):
            return raw
        raw = dict(raw)
        tasks = dict(raw.get("tasks") or {})
        for kind in TASK_SPECS:
            spec = raw.pop(kind, None)
            if spec is not None:
                tasks[kind] = {"kind": kind, **spec} if isinstance(spec, dict) else spec
        raw["tasks"] = tasks
        return raw

    @model_validator(mode="after")
    def _has_task(self):
        if not self.tasks:
            raise ValueError(f"a bundle needs at least one task ({', '.join(TASK_SPECS)})")
        for name, spec in self.tasks.items():
            if spec.kind != name:
                raise ValueError(f"tasks[{name!r}] is of kind {spec.kind!r}: a task is named after its kind")
        return self

    def referenced_files(self) -> list[str]:
        names = [self.tokenizer]
        for task in self.tasks.values():
            names += [g.file for g in task.graphs.values()]
        return names


def _legacy_int8(raw: dict) -> dict:
    """A format 1 / 2 manifest with each task's ``int8`` graph renamed ``int8-dynamic`` (what it is)."""

    def task(spec):
        graphs = spec.get("graphs") if isinstance(spec, dict) else None
        if not isinstance(graphs, dict) or "int8" not in graphs or LEGACY_INT8 in graphs:
            return spec
        g = graphs["int8"]
        g = {**g, "precision": LEGACY_INT8} if isinstance(g, dict) and g.get("precision") == "int8" else g
        return {**spec, "graphs": {(LEGACY_INT8 if k == "int8" else k): (g if k == "int8" else v)
                                   for k, v in graphs.items()}}

    raw = dict(raw)
    if isinstance(raw.get("tasks"), dict):
        raw["tasks"] = {name: task(spec) for name, spec in raw["tasks"].items()}
    for kind in TASK_SPECS:  # format 1: tasks at the top level
        if kind in raw:
            raw[kind] = task(raw[kind])
    return raw


# --------------------------------------------------------------------------------------------
# The registry of task kinds a manifest can hold
# --------------------------------------------------------------------------------------------

TASK_SPECS: dict[str, type[TaskSpec]] = {}


def register_task_spec(spec: type[TaskSpec]) -> type[TaskSpec]:
    """Add a kind of task (its spec class, with ``kind: Literal["name"] = "name"``) to the manifest schema.

    The manifest's ``tasks`` then validate as a union discriminated by ``kind`` over every registered spec.
    The serving and export sides register under the same name (``service.tasks``, ``export.tasks``).
    """
    kind = spec.model_fields["kind"].default
    if not isinstance(kind, str) or get_args(spec.model_fields["kind"].annotation) != (kind,):
        raise TypeError(f"{spec.__name__}.kind must be declared as kind: Literal[{kind!r}] = {kind!r}")
    if TASK_SPECS.get(kind, spec) is not spec:
        raise ValueError(f"a task kind {kind!r} is registered already ({TASK_SPECS[kind].__name__})")
    TASK_SPECS[kind] = spec
    specs = tuple(TASK_SPECS.values())
    union = specs[0] if len(specs) == 1 else Annotated[Union[specs], Field(discriminator="kind")]  # noqa: UP007
    Manifest.model_fields["tasks"] = FieldInfo.from_annotation(dict[str, union])
    Manifest.model_fields["tasks"].description = "task name -> spec; the spec's kind is the name"
    Manifest.model_rebuild(force=True)
    return spec


register_task_spec(NerTask)
register_task_spec(SimilarityTask)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Manifest:
    """Hash every referenced file and write ``bundle.json``; returns the manifest with hashes."""
    bundle_dir = Path(bundle_dir)
    missing = [f for f in manifest.referenced_files() if not (bundle_dir / f).is_file()]
    if missing:
        raise BundleError(f"{bundle_dir}: cannot write manifest, missing file(s): {', '.join(missing)}")
    files = {f: sha256(bundle_dir / f) for f in sorted(set(manifest.referenced_files()))}
    manifest = manifest.model_copy(update={"files": files, "format_version": FORMAT_VERSION})
    (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return manifest


def load_manifest(bundle_dir: str | Path, *, verify_hashes: bool = True) -> Manifest:
    """Read and validate ``bundle.json``: version, schema, referenced files present, hashes equal."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle directory {bundle_dir} does not exist")
    if not path.is_file():
        raise BundleError(f"{path} is missing (is {bundle_dir} a ropenlp bundle?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    version = raw.get("format_version")
    if version not in READS:
        raise BundleError(
            f"{path}: format_version {version!r} is not supported (this ropenlp reads versions "
            f"{', '.join(map(str, READS))})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{_where(err['loc']) or '<root>'}: {err['msg']}" for err in e.errors())
        raise BundleError(f"{path}: invalid manifest: {problems}") from None
    for name in manifest.referenced_files():
        if not (bundle_dir / name).is_file():
            raise BundleError(f"{bundle_dir}: file {name} named in {MANIFEST} is missing")
        if name not in manifest.files:
            raise BundleError(f"{path}: no SHA-256 recorded for {name}")
    if verify_hashes:
        for name, want in manifest.files.items():
            f = bundle_dir / name
            if not f.is_file():
                raise BundleError(f"{bundle_dir}: file {name} listed in {MANIFEST} is missing")
            got = sha256(f)
            if got != want:
                raise BundleError(f"{f}: SHA-256 mismatch (manifest {want[:12]}…, file {got[:12]}…): file changed or corrupt")
    return manifest


def check_graph_io(graph: GraphSpec, *, inputs: list[str], outputs: list[str]) -> None:
    """Compare a loaded graph's input/output names with the manifest; raise naming the difference."""
    for kind, want, got in (("inputs", graph.inputs, inputs), ("outputs", graph.outputs, outputs)):
        if sorted(want) != sorted(got):
            raise BundleError(
                f"{graph.file}: graph {kind} {sorted(got)} do not match the manifest's {sorted(want)}"
            )


def _where(loc: tuple) -> str:
    """A validation error's location, the union's tag left out: ``tasks.ner.stride``, not ``tasks.ner.ner.stride``."""
    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "tasks" and parts[2] == parts[1]:
        del parts[2]
    return ".".join(map(str, parts))
