"""/v3/responses against the same ContinuousBatchingPipeline in-process: latency of one request and of 4 at once.

    .venv/bin/python bench/responses_bench.py [--max-tokens 64] [--rounds 10]

Both sides run the fixture LLM (tests/fixtures/genai/tiny-llm) with the same SchedulerConfig and the same
chat-templated prompt, greedy, ignoring EOS, so each request makes exactly --max-tokens tokens (bench/genai_bench.py's
in-process driver). ovms runs as its own process and is called with the openai client's ``responses.create``
(unary), and the same request through chat/completions for reference. A round is 1 request, or 4 started together; its latency is the wall time until the last answer. Rounds
alternate between the two sides; medians are printed with the ratio ovms / in-process.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import openai  # noqa: E402

from genai_bench import InProcess, start_ovms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    in_process = InProcess()
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_ovms(pathlib.Path(tmp))
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v3", api_key="unused", max_retries=0)
            pool = concurrent.futures.ThreadPoolExecutor(4)

            def ovms_round(n: int) -> float:
                started = time.perf_counter()
                answers = list(pool.map(lambda _: client.responses.create(
                    model="tiny-llm", input="Hello", temperature=0, max_output_tokens=args.max_tokens,
                    extra_body={"ignore_eos": True}), range(n)))
                assert all(a.usage.output_tokens == args.max_tokens for a in answers)
                return time.perf_counter() - started

            def chat_round(n: int) -> float:  # the same request through /v3/chat/completions, for reference
                started = time.perf_counter()
                answers = list(pool.map(lambda _: client.chat.completions.create(
                    model="tiny-llm", messages=[{"role": "user", "content": "Hello"}], temperature=0,
                    max_tokens=args.max_tokens, extra_body={"ignore_eos": True}), range(n)))
                assert all(a.usage.completion_tokens == args.max_tokens for a in answers)
                return time.perf_counter() - started

            def in_process_round(n: int) -> float:
                wall, _ = in_process.round(n, args.max_tokens)
                return wall

            for n in (1, 4):  # warm-up
                ovms_round(n)
                in_process_round(n)
            print(f"/v3/responses, {args.max_tokens} tokens per request, median of {args.rounds} rounds")
            for n in (1, 4):
                times: dict = {ovms_round: [], chat_round: [], in_process_round: []}
                for round_ in range(args.rounds):
                    sides = list(times) if round_ % 2 == 0 else list(reversed(times))
                    for side in sides:
                        times[side].append(side(n))
                m, c, t = (statistics.median(times[side]) for side in (ovms_round, chat_round, in_process_round))
                print(f"  {n} request(s) at once: ovms responses {m * 1000:6.1f} ms, ovms chat {c * 1000:6.1f} ms, "
                      f"in-process {t * 1000:6.1f} ms; responses / in-process {m / t:.2f}, "
                      f"responses / chat {m / c:.2f}")
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
