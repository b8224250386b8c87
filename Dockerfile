# ropenlp serving image: `ropenlp serve` (ONNX Runtime behind Litestar + uvicorn). No torch, no
# transformers, no compilers, no tests; runs as a non-root user under tini.
#
#   GPU (default): DOCKER_BUILDKIT=1 docker build -t ropenlp:gpu .
#   CPU:           DOCKER_BUILDKIT=1 docker build --build-arg EXTRA=serve-cpu -t ropenlp:cpu .
#
# Build arguments
#   BASE_IMAGE   a Python 3.11 image for both stages (python3 on PATH; only the venv's paths are used
#                afterwards, so /usr/bin/python3 and /usr/local/bin/python3 both work)
#   EXTRA        the project's serving extra: serve (onnxruntime-gpu) or serve-cpu (onnxruntime)
#   GPU_RUNTIME  with EXTRA=serve: the pip requirement for ONNX Runtime's CUDA build. The default brings
#                CUDA and cuDNN as pip wheels, so the host needs only its NVIDIA driver (the current
#                onnxruntime-gpu is built for CUDA 13: driver >= 580). For a CUDA 12 driver (>= 525):
#                "onnxruntime-gpu[cuda,cudnn]==1.26.*". On a base image that already has CUDA and cuDNN
#                (nvidia/cuda:*-cudnn-runtime-* with Python 3.11): "onnxruntime-gpu".
# Optional BuildKit secrets, for builds behind a package mirror or a TLS-inspecting proxy; they are
# mounted for the pip steps only and never stored in a layer (docker/smoke.sh shows their use):
#   --secret id=pip_conf,src=FILE   a pip configuration file (index-url, extra-index-url, ...; with
#                                   `cert = /run/secrets/pip_ca` when the CA bundle below is passed)
#   --secret id=pip_ca,src=FILE     a CA bundle (PEM) for that index
#
# Run: docker run --gpus all -p 8000:8000 ropenlp:gpu   (flags after the image go to `ropenlp serve`)
# Another model: -v /path/to/bundle:/bundle:ro -e ROPENLP_BUNDLE=/bundle

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# build: a virtual environment with the serving dependencies and the project, nothing else
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build

ARG EXTRA=serve
ARG GPU_RUNTIME="onnxruntime-gpu[cuda,cudnn]"

SHELL ["/bin/bash", "-eu", "-o", "pipefail", "-c"]

# tini (the init process of the runtime image) comes from the base image's own Debian release
RUN apt-get update \
    && apt-get install -y --no-install-recommends "tini=0.19.*" \
    && rm -rf /var/lib/apt/lists/*

# pip reads the optional build secret `pip_conf` (a missing file is ignored); nothing reaches a layer
ENV PIP_CONFIG_FILE=/run/secrets/pip_conf \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python3 -m venv /opt/ropenlp

# the dependencies first (their layer survives code changes): the core ones and the extra's, read
# from pyproject.toml; with the GPU extra, GPU_RUNTIME (onnxruntime-gpu and its CUDA/cuDNN wheels)
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_conf \
    --mount=type=secret,id=pip_ca \
    case "${EXTRA}" in \
        serve) ort="${GPU_RUNTIME}" ;; \
        serve-cpu) ort="" ;; \
        *) echo "EXTRA must be 'serve' (GPU) or 'serve-cpu', not '${EXTRA}'" >&2; exit 1 ;; \
    esac; \
    /opt/ropenlp/bin/python -c "import sys, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies'][sys.argv[1]]))" "${EXTRA}" > /tmp/requirements.txt; \
    /opt/ropenlp/bin/pip install -r /tmp/requirements.txt ${ort:+"${ort}"}

# then the project itself, without dependencies; check that no training dependency crept in
COPY README.md ./
COPY models/ models/
COPY training/ training/
COPY export/ export/
COPY service/ service/
COPY ropenlp/ ropenlp/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_conf \
    --mount=type=secret,id=pip_ca \
    /opt/ropenlp/bin/pip install --no-deps . \
    && /opt/ropenlp/bin/pip check \
    && /opt/ropenlp/bin/pip uninstall -y pip setuptools \
    && /opt/ropenlp/bin/python -c "import importlib.util as u, sys; \
bad = [m for m in ('torch', 'transformers', 'tensorflow', 'pytest') if u.find_spec(m)]; \
sys.exit(f'the serving image must not contain {bad}' if bad else 0)" \
    && /opt/ropenlp/bin/ropenlp --version

# ---------------------------------------------------------------------------------------------
# runtime: the base image, tini, the virtual environment, a non-root user
# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG EXTRA=serve

LABEL org.opencontainers.image.title="ropenlp" \
      org.opencontainers.image.description="Chinese nested NER and sentence similarity served by ONNX Runtime" \
      org.opencontainers.image.licenses="Apache-2.0" \
      ai.ropenlp.extra="${EXTRA}"

SHELL ["/bin/bash", "-eu", "-o", "pipefail", "-c"]

COPY --from=build /usr/bin/tini /usr/bin/tini
COPY --from=build /opt/ropenlp /opt/ropenlp

# CUDA/cuDNN pip wheels (GPU variant): register their lib folders with the dynamic linker, then check
# that everything the CUDA provider links against resolves except the driver (libcuda, from the host).
RUN find /opt/ropenlp -type d -path '*/site-packages/nvidia/*/lib' | sort > /etc/ld.so.conf.d/ropenlp-nvidia.conf; \
    if [ ! -s /etc/ld.so.conf.d/ropenlp-nvidia.conf ]; then rm /etc/ld.so.conf.d/ropenlp-nvidia.conf; fi; \
    ldconfig; \
    for so in /opt/ropenlp/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime_providers_cuda.so; do \
        [ -f "$so" ] || continue; \
        missing="$(ldd "$so" | grep 'not found' | grep -v 'libcuda\.so' || true)"; \
        if [ -n "$missing" ]; then echo "unresolved in $so: $missing" >&2; exit 1; fi; \
    done; \
    groupadd --gid 10001 ropenlp; \
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ropenlp

ENV PATH=/opt/ropenlp/bin:${PATH} \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ROPENLP_HOST=0.0.0.0 \
    ROPENLP_PORT=8000

USER 10001:10001
WORKDIR /tmp
EXPOSE 8000

# /health is 503 when the inference worker is stalled (a model call past ROPENLP_WATCHDOG_S, 30 s, or
# queued work with no batch for as long): urlopen raises, the check fails; 3 failures: unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % (os.environ.get('ROPENLP_PORT') or '8000'), timeout=4)"]

# SIGTERM: uvicorn stops accepting, finishes in-flight requests (up to ROPENLP_DRAIN_S, 10 s), shuts the
# batcher down (waiting at most ROPENLP_DRAIN_S for a model call still running), then re-raises the
# signal on itself; tini (-e 143) reports that requested stop as exit code 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "-e", "143", "--", "ropenlp", "serve"]
CMD []
