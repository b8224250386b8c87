"""The model bundle: one self-describing directory that ``export`` writes and ``service`` reads.

Torch-free (pydantic + stdlib). Layout::

    BUNDLE/
      bundle.json           the manifest below (format_version, tasks, provenance, file hashes)
      tokenizer.json        one tokenizer shared by every task of the bundle
      ner.<precision>.onnx  GlobalPointer scores, one graph per precision variant
      sim.<precision>.onnx  whitened, L2-normalised sentence vectors

A task may carry several precision variants of its graph (int8 for CPU, fp16 for GPU, fp32 for
both); the runtime picks one for its execution provider with ``TaskSpec.pick``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
Precision = Literal["fp32", "fp16", "int8"]
TaskName = Literal["ner", "similarity"]
# Which variant a provider prefers, best first.
PREFERENCE: dict[str, tuple[Precision, ...]] = {
    "cpu": ("int8", "fp32", "fp16"),
    "cuda": ("fp16", "fp32", "int8"),
}


class BundleError(ValueError):
    """A bundle directory that cannot be served: the message names the file and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GraphSpec(_Strict):
    file: str
    precision: Precision
    opset: int
    inputs: list[str]
    outputs: list[str]
    parity: dict[str, float | int | str] = Field(default_factory=dict)  # measured at export


class TaskSpec(_Strict):
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

    def pick(self, provider: str, precision: Precision | None = None) -> GraphSpec:
        """The graph to run: the requested precision, else the provider's preferred one present."""
        if precision is not None:
            if precision not in self.graphs:
                raise BundleError(f"no {precision} graph in this bundle (has: {', '.join(self.graphs)})")
            return self.graphs[precision]
        for p in PREFERENCE.get(provider, PREFERENCE["cpu"]):
            if p in self.graphs:
                return self.graphs[p]
        raise BundleError("no graph")  # unreachable: validated non-empty


class NerTask(TaskSpec):
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
    ner: NerTask | None = None
    similarity: SimilarityTask | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    files: dict[str, str] = Field(default_factory=dict, description="file name -> SHA-256 hex")

    @model_validator(mode="after")
    def _has_task(self):
        if self.ner is None and self.similarity is None:
            raise ValueError("a bundle needs at least one task (ner or similarity)")
        return self

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return {name: t for name, t in (("ner", self.ner), ("similarity", self.similarity)) if t is not None}

    def referenced_files(self) -> list[str]:
        names = [self.tokenizer]
        for task in self.tasks.values():
            names += [g.file for g in task.graphs.values()]
        return names


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
    manifest = manifest.model_copy(update={"files": files})
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
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: format_version {version!r} is not supported (this ropenlp reads version {FORMAT_VERSION})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors())
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
