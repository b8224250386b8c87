"""The runtime: one ONNX Runtime session per task of a bundle, behind a small protocol.

Core talks to a :class:`Runtime` only: ``inputs(task)`` (the graph's input names, read from the
session) and ``run(task, feeds) -> np.ndarray`` (the graph's one output, float32). Tests pass a
fake one. :class:`OnnxRuntime` is the real thing:

* provider ``auto``: CUDA when a session asked for it *really* gets it (``session.get_providers()``;
  ``get_available_providers()`` lists CUDA even without a GPU), else CPU;
  ``cuda``: CUDA or an error at start-up, unless ``allow_cpu_fallback``; ``cpu``: CPU.
* precision: the requested variant, else the provider's preferred one (``TaskSpec.pick``).
* the session's real input / output names are checked against the manifest (``check_graph_io``).
* threads: ``intra_op_threads`` / ``inter_op_threads``, spinning off (a shared machine; the worker
  thread is idle between batches).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from models.bundle import BundleError, GraphSpec, Manifest, check_graph_io, load_manifest

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cuda", "cpu"]
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class ProviderUnavailable(RuntimeError):
    """``provider=cuda`` was asked for but no session could run on CUDA."""


class Runtime(Protocol):
    """What core needs from an inference backend."""

    provider: str  # "cuda" | "cpu" (or anything a fake likes)
    precision: dict[str, str]  # task -> precision variant in use

    def inputs(self, task: str) -> list[str]: ...

    def run(self, task: str, feeds: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class _Loaded:
    session: object  # onnxruntime.InferenceSession
    graph: GraphSpec
    provider: str
    inputs: list[str]
    output: str


class OnnxRuntime:
    """ONNX Runtime sessions for every task of a bundle (see the module docstring)."""

    def __init__(
        self,
        bundle_dir: str | Path,
        manifest: Manifest | None = None,
        *,
        provider: ProviderChoice = "auto",
        allow_cpu_fallback: bool = False,
        precision: str | None = None,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)  # quiet the CUDA library probe's error lines; errors still raise
        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest if manifest is not None else load_manifest(self.bundle_dir)
        self._ort = ort
        self._choice, self._fallback, self._precision = provider, allow_cpu_fallback, precision
        self._threads = (intra_op_threads, inter_op_threads)
        self._tasks: dict[str, _Loaded] = {}
        for task, spec in self.manifest.tasks.items():
            t0 = time.perf_counter()
            loaded = self._open(task, spec)
            self._tasks[task] = loaded
            log.info(
                "loaded %s graph %s (%s) on %s in %.0f ms; inputs %s, intra/inter-op threads %d/%d",
                task,
                loaded.graph.file,
                loaded.graph.precision,
                loaded.provider,
                (time.perf_counter() - t0) * 1e3,
                loaded.inputs,
                *self._threads,
            )
        providers = {t.provider for t in self._tasks.values()}
        self.provider = providers.pop() if len(providers) == 1 else "mixed"
        self.precision = {task: t.graph.precision for task, t in self._tasks.items()}

    # -- loading -----------------------------------------------------------------------------

    def session_options(self):
        """The server's ONNX Runtime session options (threads, no spinning, every graph optimisation)."""
        so = self._ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = self._threads
        so.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    def _session(self, graph: GraphSpec, providers: list[str]):
        path = self.bundle_dir / graph.file
        try:
            return self._ort.InferenceSession(str(path), sess_options=self.session_options(), providers=providers)
        except Exception as e:  # ORT raises its own exception types; keep the message, name the file
            raise BundleError(f"{path}: ONNX Runtime cannot load the graph: {e}") from e

    def _preload_cuda_libraries(self) -> None:
        """Load CUDA/cuDNN from the nvidia-* pip wheels (onnxruntime-gpu[cuda,cudnn]) when they are there:
        the onnxruntime-gpu library has no search path for them outside a configured image."""
        preload = getattr(self._ort, "preload_dlls", None)
        if preload is None:
            return
        try:
            preload()
        except Exception as e:  # missing wheels are fine when CUDA comes from the system
            log.debug("onnxruntime.preload_dlls() failed: %s", e)

    def _open(self, task: str, spec) -> _Loaded:
        session, graph, provider = None, None, "cpu"
        if self._choice in ("auto", "cuda") and CUDA in self._ort.get_available_providers():
            self._preload_cuda_libraries()
            graph = spec.pick("cuda", self._precision)
            session = self._session(graph, [CUDA, CPU])
            if CUDA in session.get_providers():
                provider = "cuda"
            else:
                log.info(
                    "%s: CUDA listed by onnxruntime but the session runs on %s", task, session.get_providers()
                )
                session = None
        if session is None:
            if self._choice == "cuda" and not self._fallback:
                raise ProviderUnavailable(
                    "provider=cuda but no CUDA device is usable by onnxruntime "
                    f"(available providers: {self._ort.get_available_providers()}); "
                    "install the 'serve' extra on a GPU host, use provider=auto|cpu, or set allow_cpu_fallback"
                )
            if self._choice == "cuda":
                log.warning("%s: provider=cuda unavailable, falling back to CPU (allow_cpu_fallback)", task)
            graph = spec.pick("cpu", self._precision)
            session = self._session(graph, [CPU])
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        check_graph_io(graph, inputs=inputs, outputs=outputs)
        if len(outputs) != 1:
            raise BundleError(f"{graph.file}: expected one output, the graph has {outputs}")
        return _Loaded(session=session, graph=graph, provider=provider, inputs=inputs, output=outputs[0])

    # -- the protocol ------------------------------------------------------------------------

    def inputs(self, task: str) -> list[str]:
        return list(self._tasks[task].inputs)

    def run(self, task: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        t = self._tasks[task]
        (out,) = t.session.run([t.output], feeds)
        return np.asarray(out, dtype=np.float32)  # fp16 graphs: decode and compare in fp32

    def describe(self) -> dict[str, object]:
        return {
            task: {
                "file": t.graph.file,
                "precision": t.graph.precision,
                "provider": t.provider,
                "inputs": t.inputs,
            }
            for task, t in self._tasks.items()
        }
