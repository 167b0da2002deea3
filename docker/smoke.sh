#!/usr/bin/env bash
# Build the ovms image with podman and check it serves like OVMS's image (run by hand; CI does not run this).
#
#   docker/smoke.sh            # from the repository root, as root (rootful podman)
#
# What it does, each step with a timeout:
#  1. podman, runc and debootstrap (apt-get install if missing); a containers.conf with `default_ulimits = []`;
#     podman always with `--runtime /usr/sbin/runc --cgroup-manager cgroupfs` (crun refuses this kind of host's
#     hybrid cgroups and ulimits).
#  2. The base image localhost/debian-py:bookworm, made once with debootstrap (no registry is reachable here).
#  3. A snapshot of the checkout (tracked and untracked-not-ignored files) and, in it, a wheelhouse built on the
#     host (`pip wheel`), so the image build needs no network (`--network=none`).
#  4. A model repository: the demo models (tests/fixtures/models.py) and the fixture LLM as a
#     mediapipe_config_list entry with the graph.pbtxt `--pull` would write.
#  5. One container, read-only root, host network; a KServe v2 gRPC infer on `simple` (tritonclient), a chat
#     completion on /v3 (openai), the gRPC health service, the image's HEALTHCHECK reaching "healthy"; then
#     SIGTERM (podman stop) and exit code 0.
#  6. Prints build time, image size, cold start (container start to REST ready) and stop time.
# Idempotent: a second run reuses the base image and rebuilds the rest. Ports and paths can be overridden.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${SMOKE_DIR:-/tmp/ovms-smoke}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-py:bookworm}
IMAGE=${IMAGE:-localhost/ovms-py:smoke}
NAME=${CONTAINER_NAME:-ovms-smoke}
GRPC_PORT=${GRPC_PORT:-19000}     # host network: not 9000/8000, which `make serve` may hold
REST_PORT=${REST_PORT:-18000}
STOP_TIMEOUT=${STOP_TIMEOUT:-45}  # > the server's drain timeout (--drain_timeout_seconds, default 30)
PY=$ROOT/.venv/bin/python
RUNC=/usr/sbin/runc

log() { printf '\n== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

[ "$(id -u)" = 0 ] || die "run as root (rootful podman)"
[ -x "$PY" ] || die "$PY missing: run 'make build' first"

log "tools"
if ! command -v podman >/dev/null || [ ! -x "$RUNC" ] || ! command -v debootstrap >/dev/null; then
    timeout 600 apt-get update -q
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q podman runc debootstrap
fi
mkdir -p "$WORK"
printf '[containers]\ndefault_ulimits = []\n' > "$WORK/containers.conf"
export CONTAINERS_CONF=$WORK/containers.conf
pm() {  # pm SECONDS podman-args...
    local seconds=$1; shift
    timeout --kill-after=10 "$seconds" podman --runtime "$RUNC" --cgroup-manager cgroupfs "$@"
}
cleanup() { pm 60 rm -f -t 5 "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

log "base image $BASE_IMAGE"
if ! pm 30 image exists "$BASE_IMAGE"; then
    rm -rf "$WORK/rootfs"
    start=$(now)
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,libcurl4 \
        bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed, see $WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -c . | pm 600 import - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
    echo "made in $(elapsed "$start" "$(now)") s"
fi

log "source snapshot and host wheelhouse"
rm -rf "$WORK/src"
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -c) \
    | tar -x -C "$WORK/src"
rm -f "$WORK/src/docker/wheelhouse/"*.whl
start=$(now)
(cd "$WORK/src" && timeout 1800 nice -n 10 "$PY" -m pip wheel -q --wheel-dir docker/wheelhouse . ) \
    || die "pip wheel failed"
wheel_time=$(elapsed "$start" "$(now)")
echo "$(ls "$WORK/src/docker/wheelhouse" | grep -c '\.whl$') wheels in $wheel_time s"

log "image build $IMAGE (no network)"
start=$(now)
pm 1800 build --format docker --network=none --build-arg BASE="$BASE_IMAGE" \
    -f "$WORK/src/docker/Dockerfile" -t "$IMAGE" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; die "podman build failed, see $WORK/build.log"; }
build_time=$(elapsed "$start" "$(now)")
size_bytes=$(pm 30 image inspect --format '{{.Size}}' "$IMAGE")
echo "built in $build_time s, $((size_bytes / 1000000)) MB"

log "model repository"
rm -rf "$WORK/models"
timeout 300 "$PY" "$ROOT/tests/fixtures/models.py" "$WORK/models" >/dev/null
cp -r "$ROOT/tests/fixtures/genai/tiny-llm" "$WORK/models/tiny-llm"
timeout 60 "$PY" - "$WORK/models" <<'PYEOF'
import json, pathlib, sys
from ovms.pull.graph import GraphOptions, write_graph
root = pathlib.Path(sys.argv[1])
write_graph(root / "tiny-llm", "text_generation", GraphOptions(model_name="tiny", cache_size=1))
config = json.loads((root / "config.json").read_text())
config["mediapipe_config_list"] = [{"name": "tiny", "base_path": "tiny-llm"}]
(root / "config.json").write_text(json.dumps(config, indent=2) + "\n")
PYEOF
chmod -R a+rX "$WORK/models"

log "run"
start=$(now)
pm 120 run -d --name "$NAME" --network=host --read-only -v "$WORK/models:/models:ro" "$IMAGE" \
    --config_path /models/config.json --port "$GRPC_PORT" --rest_port "$REST_PORT" >/dev/null
ready=""
for _ in $(seq 1 600); do  # 0.2 s steps: at most 120 s
    if timeout 2 "$PY" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "http://127.0.0.1:$REST_PORT/v2/health/ready" 2>/dev/null; then ready=$(now); break; fi
    [ "$(pm 30 inspect --format '{{.State.Running}}' "$NAME")" = true ] \
        || { pm 30 logs "$NAME" | tail -30; die "the container exited before it was ready"; }
    sleep 0.2
done
[ -n "$ready" ] || { pm 30 logs "$NAME" | tail -30; die "not ready within 120 s"; }
cold_start=$(elapsed "$start" "$ready")
echo "ready after $cold_start s"

log "KServe v2 gRPC infer on simple (tritonclient)"
timeout 60 "$PY" - "127.0.0.1:$GRPC_PORT" <<'PYEOF'
import sys
import numpy as np
import tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient(sys.argv[1])
a = np.arange(16, dtype=np.int32).reshape(1, 16)
b = np.full((1, 16), 3, dtype=np.int32)
inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
inputs[0].set_data_from_numpy(a)
inputs[1].set_data_from_numpy(b)
result = client.infer("simple", inputs, client_timeout=30)
assert (result.as_numpy("OUTPUT0") == a + b).all(), result.as_numpy("OUTPUT0")
assert (result.as_numpy("OUTPUT1") == a - b).all(), result.as_numpy("OUTPUT1")
print("OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1: ok")
PYEOF

log "gRPC health (grpc.health.v1)"
timeout 30 "$PY" - "127.0.0.1:$GRPC_PORT" <<'PYEOF'
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
assert status == health_pb2.HealthCheckResponse.SERVING, status
print("SERVING")
PYEOF

log "chat completion on /v3 (openai)"
timeout 120 "$PY" - "http://127.0.0.1:$REST_PORT/v3" <<'PYEOF'
import sys
import openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", timeout=60, max_retries=0)
answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                        max_tokens=16)
text = answer.choices[0].message.content
assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.completion_tokens > 0, answer
print(f"{answer.usage.completion_tokens} tokens: {text!r}")
PYEOF

log "HEALTHCHECK"
# Podman runs HEALTHCHECK from systemd timers, which a host without systemd lacks: run it the way a timer
# would, `podman healthcheck run`, which also records the status that inspect shows.
healthy=""
for _ in $(seq 1 10); do
    if pm 30 healthcheck run "$NAME" >/dev/null 2>&1; then healthy=yes; break; fi
    sleep 1
done
status=$(pm 30 inspect --format '{{.State.Health.Status}}' "$NAME" 2>/dev/null \
    || pm 30 inspect --format '{{.State.Healthcheck.Status}}' "$NAME")
[ -n "$healthy" ] && [ "$status" = healthy ] || die "HEALTHCHECK status is '$status'"
echo "$status"

log "SIGTERM (podman stop -t $STOP_TIMEOUT)"
start=$(now)
pm $((STOP_TIMEOUT + 30)) stop -t "$STOP_TIMEOUT" "$NAME" >/dev/null
stop_time=$(elapsed "$start" "$(now)")
code=$(pm 30 inspect --format '{{.State.ExitCode}}' "$NAME")
pm 30 logs "$NAME" >"$WORK/container.log" 2>&1
tail -3 "$WORK/container.log"
[ "$code" = 0 ] || die "exit code $code after SIGTERM (log: $WORK/container.log)"
! grep -q "openvino_telemetry" "$WORK/container.log" || die "OpenVINO telemetry warnings in $WORK/container.log"
echo "exit code 0 after $stop_time s"

log "figures"
printf 'host wheelhouse:  %s s\nimage build:      %s s (wheelhouse install, no network)\n' "$wheel_time" "$build_time"
printf 'image size:       %s MB (base %s MB)\n' "$((size_bytes / 1000000))" \
    "$(( $(pm 30 image inspect --format '{{.Size}}' "$BASE_IMAGE") / 1000000 ))"
printf 'cold start:       %s s (podman run to /v2/health/ready 200; 7 classic models, 8 versions, and the tiny LLM)\n' "$cold_start"
printf 'stop:             %s s (SIGTERM to exit 0, idle server)\n' "$stop_time"
echo "smoke: ok"
