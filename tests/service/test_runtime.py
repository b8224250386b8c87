"""The ONNX Runtime layer: provider choice, precision variant, graph names checked against the manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from models.bundle import BundleError
from service.runtime import OnnxRuntime, ProviderUnavailable

NO_CUDA = "CUDAExecutionProvider" not in ort.get_available_providers()


def test_cpu_session_reads_names_from_the_graph(tiny_bundle) -> None:
    rt = OnnxRuntime(tiny_bundle, provider="cpu")
    assert rt.provider == "cpu" and rt.precision == {"ner": "fp32", "similarity": "fp32"}
    assert sorted(rt.inputs("ner")) == ["attention_mask", "input_ids"]
    ids = np.array([[2, 7, 8, 3]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    assert rt.run("ner", feeds).shape == (1, 3, 4, 4)
    vec = rt.run("similarity", feeds)
    assert vec.shape == (1, 32) and vec.dtype == np.float32
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA build of onnxruntime is installed")
def test_cuda_unavailable_fails_at_start_unless_fallback(tiny_bundle) -> None:
    with pytest.raises(ProviderUnavailable, match="allow_cpu_fallback"):
        OnnxRuntime(tiny_bundle, provider="cuda")
    assert OnnxRuntime(tiny_bundle, provider="cuda", allow_cpu_fallback=True).provider == "cpu"
    assert OnnxRuntime(tiny_bundle, provider="auto").provider == "cpu"


def test_missing_precision_and_wrong_names_are_bundle_errors(tiny_bundle, tmp_path) -> None:
    with pytest.raises(BundleError, match="no int8 graph"):
        OnnxRuntime(tiny_bundle, provider="cpu", precision="int8")
    bad = shutil.copytree(tiny_bundle, tmp_path / "bad")
    manifest = json.loads((bad / "bundle.json").read_text())
    manifest["tasks"]["ner"]["graphs"]["fp32"]["inputs"] = ["input_ids", "token_type_ids"]
    (bad / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="do not match the manifest"):
        OnnxRuntime(bad, provider="cpu")
