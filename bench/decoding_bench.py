"""Decoding options on the tiny LLM fixture, against plain decoding in the same run and the same server.

    .venv/bin/python bench/decoding_bench.py [--requests 8] [--tokens 64] [--rounds 3]

One ovms serves the fixture (tests/fixtures/genai/tiny-llm) as four graphs: `plain`; `speculative` (draft_models_path:
the same model, so every draft is accepted and the figure shows the machinery's cost, not a real draft's gain);
`lookup` (plugin_config prompt_lookup); and `prefix` (enable_prefix_caching: true; `plain` has it off). The openai
client sends greedy completions ignoring EOS. Printed: generated tokens per second of each graph for requests one
after another (alternating graphs per round, median of the rounds) and the ratio to `plain`; then time to first token
of a second request that shares a long prompt with the first, with and without prefix caching.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from tests.conftest import ThreadedServer  # noqa: E402
from tests.genai.conftest import LLM_DIR, llm_graph, write_graphs  # noqa: E402

# Repetitive text, so that prompt lookup finds n-grams of the prompt in what the model says back.
PROMPT = "one two three four five six seven eight " * 4


def graph(**options) -> str:
    return llm_graph(8, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    graphs = {"plain": graph(),
              "speculative": graph(draft_models_path=f'"{LLM_DIR}"'),
              "lookup": graph().replace("plugin_config: '{ }'", "plugin_config: '{\"prompt_lookup\": true}'"),
              "prefix": graph().replace("enable_prefix_caching: false", "enable_prefix_caching: true")}
    with tempfile.TemporaryDirectory() as tmp:
        with ThreadedServer(config_path=write_graphs(pathlib.Path(tmp), graphs)) as server:
            client = openai.OpenAI(base_url=f"http://{server.rest_url}/v3", api_key="unused", max_retries=0)
            throughput(client, args)
            prefix_ttft(client)


def generate(client, model: str, tokens: int, prompt: str = PROMPT) -> int:
    response = client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0,
                                         extra_body={"ignore_eos": True})
    return response.usage.completion_tokens


def throughput(client, args) -> None:
    models = ["plain", "speculative", "lookup"]
    for model in models:  # warm-up
        generate(client, model, 8)
    rates: dict[str, list[float]] = {m: [] for m in models}
    for round_ in range(args.rounds):
        for model in (models if round_ % 2 == 0 else list(reversed(models))):
            started = time.perf_counter()
            tokens = sum(generate(client, model, args.tokens) for _ in range(args.requests))
            rates[model].append(tokens / (time.perf_counter() - started))
    plain = statistics.median(rates["plain"])
    print(f"tokens/s, {args.requests} requests one after another, {args.tokens} tokens each, median of "
          f"{args.rounds} rounds:")
    for model in models:
        rate = statistics.median(rates[model])
        print(f"  {model:12s} {rate:8.0f} tokens/s   {rate / plain:.2f}x plain")


def ttft(client, model: str, prompt: str) -> float:
    started = time.perf_counter()
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=4, temperature=0, stream=True)
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - started
    return first if first is not None else time.perf_counter() - started


def prefix_ttft(client) -> None:
    shared = "the history of the model server begins with a long system prompt. " * 12  # about 400 tokens
    results = {}
    for model in ("plain", "prefix"):
        samples = []
        for i in range(5):
            ttft(client, model, shared + f"first question {i}?")
            samples.append(ttft(client, model, shared + f"second question {i}?"))
        results[model] = statistics.median(samples)
    print("time to first token of a request sharing a ~400-token prefix with the one before (median of 5):")
    print(f"  prefix caching off {results['plain'] * 1000:7.1f} ms")
    print(f"  prefix caching on  {results['prefix'] * 1000:7.1f} ms   "
          f"{results['plain'] / results['prefix']:.2f}x faster")


if __name__ == "__main__":
    main()
