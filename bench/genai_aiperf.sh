#!/usr/bin/env bash
# Drive ovms with aiperf (an OpenAI benchmark client we did not write) on the fixture LLM.
#   bash bench/genai_aiperf.sh [CONCURRENCY] [REQUESTS]
# aiperf lives in its own venv (it pulls transformers, pandas, ...): python3.11 -m venv /tmp/venv-aiperf &&
# /tmp/venv-aiperf/bin/pip install aiperf. Its --tokenizer must be an absolute path, and HF_HUB_OFFLINE must
# NOT be set (../shared/PEERS.md). Report: bench/results/aiperf/profile_export_aiperf.csv
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AIPERF=${AIPERF:-/tmp/venv-aiperf/bin/aiperf}
CONCURRENCY=${1:-8}
REQUESTS=${2:-128}
WORK=$(mktemp -d)
mkdir "$WORK/tiny-llm"
PYTHONPATH=$ROOT "$ROOT/.venv/bin/python" -c "
import sys; sys.path.insert(0, '$ROOT/bench'); import genai_bench as g
open('$WORK/tiny-llm/graph.pbtxt', 'w').write(g.GRAPH.format(path=g.LLM_DIR))"
PORT=$("$ROOT/.venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
PYTHONPATH=$ROOT "$ROOT/.venv/bin/python" -m ovms --model_name tiny-llm --model_path "$WORK/tiny-llm" \
    --rest_port "$PORT" --rest_bind_address 127.0.0.1 --log_level WARNING &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$PORT/v2/health/ready" && break; sleep 0.2; done
mkdir -p "$ROOT/bench/results"
cd "$WORK"
"$AIPERF" profile --model tiny-llm --url "http://127.0.0.1:$PORT" --endpoint-type chat --streaming \
    --tokenizer "$ROOT/tests/fixtures/genai/tiny-llm" --concurrency "$CONCURRENCY" --request-count "$REQUESTS" \
    --warmup-request-count 8 --isl 32 --osl 128 --extra-inputs ignore_eos:true --use-server-token-count \
    --ui-type none --artifact-dir "$ROOT/bench/results/aiperf" > "$ROOT/bench/results/aiperf/console.txt" 2>&1 || {
    tail -30 "$ROOT/bench/results/aiperf/console.txt"; exit 1; }
cat "$ROOT/bench/results/aiperf/profile_export_aiperf.csv"
