"""README, "Generative models": tokens of a running stream leave the generation worker at most every
OVMS_GENAI_FLUSH_MS milliseconds (first tokens and ends at once). The environment variable as operators set it,
on `python -m ovms` serving the fixture LLM, measured at the openai client: a long stream arrives in few chunks
about N apart with a large N, and in many with a small one.

The fixture makes about 1,600 tokens/s here, so a 4,000-token stream lasts ~2.5 s. The assertions are on rates
and medians, which a loaded 2-core machine stretches but does not turn around."""
from __future__ import annotations

import statistics
import time

import openai

from tests.genai.conftest import LLM_DIR
from tests.test_cli import serve, stop, wait_ready

TOKENS = 4000  # OVMS's bound for ignore_eos


def stream_times(tmp_path, monkeypatch, flush_ms: int) -> tuple[list[float], int]:
    """Arrival times (s from the request) of the chunks that carry text, and the completion tokens reported."""
    monkeypatch.setenv("OVMS_GENAI_FLUSH_MS", str(flush_ms))
    process, _, rest_port = serve("--model_name", "tiny", "--model_path", str(LLM_DIR), "--task", "text_generation",
                                  "--cache_size", "1", log_path=tmp_path / f"ovms-{flush_ms}.log")
    try:
        wait_ready(rest_port, process, timeout=120)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{rest_port}/v3", api_key="unused", max_retries=0,
                           timeout=120) as client:
            start = time.perf_counter()
            stream = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=TOKENS, stream=True,
                extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
            times, usage = [], None
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    times.append(time.perf_counter() - start)
                usage = chunk.usage or usage
    finally:
        stop(process)
    return times, usage.completion_tokens


def test_flush_interval_paces_a_stream(tmp_path, monkeypatch):
    slow_times, slow_tokens = stream_times(tmp_path, monkeypatch, 500)
    fast_times, fast_tokens = stream_times(tmp_path, monkeypatch, 10)
    assert slow_tokens == fast_tokens == TOKENS
    slow_span, fast_span = slow_times[-1] - slow_times[0], fast_times[-1] - fast_times[0]
    assert slow_span > 1.0, f"the stream lasted {slow_span:.2f} s: too short to show pacing"
    # 500 ms: a chunk per interval, and the first at once (+2: the first token, and the partial last interval)
    assert len(slow_times) <= slow_span / 0.5 + 2, (len(slow_times), slow_span)
    middle = [b - a for a, b in zip(slow_times[1:], slow_times[2:-1])]  # between the first token and the end
    assert middle and 0.4 <= statistics.median(middle) <= 1.2, middle
    # 10 ms: many chunks, close together
    assert statistics.median(b - a for a, b in zip(fast_times, fast_times[1:])) < 0.1
    slow_rate, fast_rate = len(slow_times) / slow_span, len(fast_times) / fast_span
    assert fast_rate > 10 * slow_rate, (fast_rate, slow_rate)
