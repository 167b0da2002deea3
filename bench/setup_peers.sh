#!/usr/bin/env bash
# Installs the peer servers and load generators that bench/kserve_bench.py compares ovms against.
# Idempotent: re-running only installs what is missing. Everything goes into bench/.venv-peers (never the
# project's .venv): peer servers pin numpy<2, uvloop<0.22 and old protobufs that ovms does not want.
# Facts behind each pin: ../shared/PEERS.md (measured on this kind of machine).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PEERS_VENV:-$HERE/.venv-peers}"
PYTHON="${PYTHON:-python3}"
FAILED=()

step() { printf '\n== %s\n' "$*"; }
fail() { printf '!! FAILED: %s\n' "$*" >&2; FAILED+=("$*"); }

# Debian: perf_analyzer links libb64.so.0d; h2load (nghttp2-client) replays gRPC frames; wrk drives REST.
step "Debian packages: libb64-0d nghttp2-client wrk"
need=()
for pkg in libb64-0d nghttp2-client wrk; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need[@]}"; } || fail "apt-get install ${need[*]}"
else
    echo "already installed"
fi

step "venv $VENV"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || { fail "venv"; }
fi
PIP="$VENV/bin/pip"
pipi() { "$PIP" install -q --disable-pip-version-check "$@" 2>&1 | grep -v "^WARNING: Location" ; return "${PIPESTATUS[0]}"; }

# perf_analyzer: the binary ships inside the tritonclient 2.51.0 wheel (newer wheels need glibc 2.38; the PyPI
# perf-analyzer 0.1.0 package is an empty placeholder). It dlopens libcudart, hence nvidia-cuda-runtime-cu12.
step "tritonclient==2.51.0 (perf_analyzer) + nvidia-cuda-runtime-cu12"
pipi 'tritonclient==2.51.0' nvidia-cuda-runtime-cu12 || fail "tritonclient==2.51.0 / nvidia-cuda-runtime-cu12"

# Triton 2.51 C++ server with its python backend, bundled in the nvidia-pytriton wheel. The python-backend stub
# takes numpy from the venv's python3 and fails every response with numpy 2.
step "nvidia-pytriton (tritonserver) + numpy<2"
pipi nvidia-pytriton 'numpy<2' || fail "nvidia-pytriton / numpy<2"

# MLServer 1.7.1's worker dies with uvloop >= 0.22 ("There is no current event loop").
step "mlserver==1.7.1 + uvloop<0.22"
pipi 'mlserver==1.7.1' 'uvloop<0.22' 'numpy<2' || fail "mlserver==1.7.1 / uvloop<0.22"

# Optional like-for-like peer: MLServer on OpenVINO. Only installs with --no-deps (its pins conflict).
step "optional: mlserver-openvino==0.4.10"
if "$VENV/bin/python" -c 'import mlserver_openvino' 2>/dev/null; then
    echo "already installed"
else
    { pipi 'openvino<2026' onnx joblib 'numpy<2' && pipi --no-deps mlserver-openvino==0.4.10; } \
        || echo "(optional) mlserver-openvino not installed; the benchmark uses MLServer's plain Python runtime"
fi

step "checks"
# The wheel installs the binary as a script into the venv's bin/.
PA="$VENV/bin/perf_analyzer"; [ -x "$PA" ] || PA=""
if [ -n "$PA" ]; then
    chmod +x "$PA" 2>/dev/null
    CUDART="$("$VENV/bin/python" -c 'import nvidia.cuda_runtime, os; print(os.path.join(list(nvidia.cuda_runtime.__path__)[0], "lib"))' 2>/dev/null)"
    if LD_LIBRARY_PATH="$CUDART:${LD_LIBRARY_PATH:-}" "$PA" --version 2>&1 | grep -q "Perf Analyzer"; then
        echo "perf_analyzer: $PA"
    else
        fail "perf_analyzer does not start (try: LD_LIBRARY_PATH=$CUDART $PA --help)"
    fi
else
    fail "perf_analyzer binary not found in the tritonclient wheel"
fi
TS="$("$VENV/bin/python" -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver")' 2>/dev/null)"
[ -n "$TS" ] && [ -x "$TS" ] && echo "tritonserver: $TS" || fail "tritonserver binary not found in nvidia-pytriton"
[ -x "$VENV/bin/mlserver" ] && echo "mlserver: $VENV/bin/mlserver" || fail "mlserver entry point missing"
command -v h2load >/dev/null && echo "h2load: $(command -v h2load)" || fail "h2load missing"
command -v wrk >/dev/null && echo "wrk: $(command -v wrk)" || fail "wrk missing"

if [ ${#FAILED[@]} -gt 0 ]; then
    printf '\n%d step(s) failed:\n' "${#FAILED[@]}" >&2
    printf '  - %s\n' "${FAILED[@]}" >&2
    exit 1
fi
printf '\nall peers ready in %s\n' "$VENV"
