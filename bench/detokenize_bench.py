"""Incremental detokenizer: pure vs Cython twin, tokens per second through push() (the per-token streaming path).

    .venv/bin/python bench/detokenize_bench.py

Uses the fixture LLM's real token byte table (tests/fixtures/genai/tiny-llm) and a Japanese/emoji/ASCII text
re-tokenized with it, with and without stop strings.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import openvino_genai

    from ovms._native import load

    from ovms.backends.genai_llm import token_byte_table

    llm = ROOT / "tests" / "fixtures" / "genai" / "tiny-llm"
    vocab = json.loads((llm / "config.json").read_text())["vocab_size"]
    table = token_byte_table(llm, vocab)
    tokenizer = openvino_genai.Tokenizer(str(llm))
    text = "Hello! How can I help you? こんにちは 👋 (konnichiwa) one two three four five " * 40
    ids = tokenizer.encode(text, add_special_tokens=False).input_ids.data[0].tolist()
    for stops in ((), ("<|never|>", "</tool_call>")):  # stops that never match: the hold-back check runs every token
        for pure in (True, False):
            module = load("detokenize", pure=pure)
            vocabulary = module.Vocabulary(table)  # once per model, as the servable does
            best = 0.0
            for _ in range(5):
                detok = module.Detokenizer(vocabulary, stops)
                started = time.perf_counter()
                for token in ids:
                    detok.push(token)
                detok.finish()
                best = max(best, len(ids) / (time.perf_counter() - started))
            print(f"{'pure' if pure else 'native':>6} stops={len(stops)}: {best / 1e6:.2f} M tokens/s "
                  f"({1e9 / best:.0f} ns/token)")
    # What a new stream costs: a Detokenizer on the shared Vocabulary, against building the table per stream (as
    # before 2026-11-22) for a vocabulary the size of Qwen's.
    big = [bytes([i % 256]) * (1 + i % 7) for i in range(151_936)]
    for pure in (True, False):
        module = load("detokenize", pure=pure)
        vocabulary = module.Vocabulary(big)
        started = time.perf_counter()
        for _ in range(1000):
            module.Detokenizer(vocabulary, ("</s>",))
        shared = (time.perf_counter() - started) / 1000
        started = time.perf_counter()
        module.Detokenizer(big, ("</s>",))
        rebuilt = time.perf_counter() - started
        print(f"{'pure' if pure else 'native':>6} new stream, 152k vocabulary: {shared * 1e6:.1f} us shared, "
              f"{rebuilt * 1e3:.1f} ms rebuilt per stream")


if __name__ == "__main__":
    main()
