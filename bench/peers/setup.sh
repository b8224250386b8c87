#!/usr/bin/env bash
# The peers' virtual environments for bench/peers.py and bench/peers_http.py, one per peer, under
# runs/peers/ (git-ignored), with the versions pinned that were installed and run here (2026-12).
#
#   bash bench/peers/setup.sh              # st and infinity
#   bash bench/peers/setup.sh infinity     # one of them (an existing venv is removed first)
#   PEERS_ROOT=DIR bash bench/peers/setup.sh   # elsewhere (then give bench/peers*.py --venvs DIR)
#
# torch==2.13.0 goes in first, in every venv, from the machine's local wheel folder (pip's find-links on
# the project's machines: the CPU build, 754 MB). Elsewhere a bare `pip install torch` pulls the CUDA build
# (several GB): point pip at PyTorch's CPU wheel index (PIP_EXTRA_INDEX_URL) before running this.
#
# st: sentence-transformers[onnx] 5.7.0. The [onnx] extra installs only at 5.x: it brings optimum-onnx
#   0.1.0, which needs transformers < 4.58, so transformers 4.57.6 and optimum 2.1.0. This venv serves
#   sentence-transformers' torch and ONNX backends, builds the peers' models (ST's ONNX export and
#   export_dynamic_quantized_onnx_model, optimum's ORTModelForTokenClassification export and
#   ORTQuantizer), and runs the transformers / optimum token-classification pipelines.
#
# infinity: infinity-emb[server,optimum,torch] 0.0.77 with transformers 4.48.3, optimum 1.24.0,
#   numpy < 2 (1.26.4) and click 8.1.8: the pins issue 16 names.
#   What was found here: it installs and serves with torch 2.13.0+cpu, both `--engine optimum` and
#   `--engine torch`, so no older torch (and no CUDA wheel) is needed. `--no-deps` would not avoid torch:
#   optimum 1.24 requires it and optimum/onnxruntime/modeling_ort.py imports it at the top, so even the
#   optimum engine imports torch. The [torch] extra (sentence-transformers 3.4.1) is only for the
#   reversal check of infinity's default torch engine; with it installed, infinity imports
#   sentence_transformers at start whatever the engine, which imports datasets and so pyarrow: pyarrow 26
#   needs numpy 2 and the import fails ("pyarrow requires NumPy 2.0 or newer"), so pyarrow is pinned to
#   21.0.0 (the oldest that datasets 5.0.1 accepts). infinity 0.0.78 exists; 0.0.77 is the one measured.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${PEERS_ROOT:-runs/peers}
PY=${PYTHON:-python3}
TORCH="torch==2.13.0"

make_venv() {  # NAME PACKAGES...
    local name=$1; shift
    rm -rf "$ROOT/$name"
    mkdir -p "$ROOT"
    "$PY" -m venv "$ROOT/$name"
    "$ROOT/$name/bin/pip" install -q "$TORCH"
    "$ROOT/$name/bin/pip" install -q "$TORCH" "$@"
    "$ROOT/$name/bin/pip" check
    echo "$name: $("$ROOT/$name/bin/python" bench/peers/peer.py versions)"
}

setup_st() {
    make_venv st "sentence-transformers[onnx]==5.7.0" "optimum-onnx==0.1.0" "optimum==2.1.0" \
        "transformers==4.57.6" "onnxruntime==1.32.0"
}

setup_infinity() {
    make_venv infinity "infinity-emb[server,optimum,torch]==0.0.77" "transformers==4.48.3" \
        "optimum[onnxruntime]==1.24.0" "numpy<2" "click==8.1.8" "sentence-transformers==3.4.1" \
        "pyarrow==21.0.0" "onnxruntime==1.32.0"
}

for name in "${@:-st infinity}"; do
    for n in $name; do
        case $n in
            st) setup_st ;;
            infinity) setup_infinity ;;
            *) echo "unknown peer venv: $n (st, infinity)" >&2; exit 2 ;;
        esac
    done
done
