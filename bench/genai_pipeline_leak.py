"""Reproducer: openvino_genai's ContinuousBatchingPipeline keeps memory per finished request.

    .venv/bin/python bench/genai_pipeline_leak.py [--rounds 6] [--per-round 1500] [--encode]

The fixture LLM, requests of 24 new tokens in batches of 8, stepped to completion, handles read and dropped;
the same prompt ids and GenerationConfig reused (``--encode`` tokenizes each prompt instead). Prints the RSS
after each round, before and after glibc's malloc_trim (which returns nothing: it is not fragmentation).
Measured 2026-12-02 with openvino-genai 2026.4.1.0: about 8 KB per request in the pipeline, 8 KB more per
Tokenizer.encode; ovms's generation worker shows the same growth under load (bench/soak.py).
"""
from __future__ import annotations

import argparse
import ctypes
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))


def rss_mb() -> int:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=1500)
    parser.add_argument("--encode", action="store_true", help="tokenize every prompt (adds the tokenizer's share)")
    args = parser.parse_args()
    import openvino_genai as ov_genai

    from tests.genai.conftest import LLM_DIR

    scheduler = ov_genai.SchedulerConfig()
    scheduler.cache_size, scheduler.max_num_seqs, scheduler.enable_prefix_caching = 1, 16, False
    pipe = ov_genai.ContinuousBatchingPipeline(str(LLM_DIR), scheduler, "CPU", {})
    tokenizer = ov_genai.Tokenizer(str(LLM_DIR))
    prompt = "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode(prompt).input_ids
    config = pipe.get_config()
    config.max_new_tokens = 24
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    request_id = 0
    start = rss_mb()
    for round_no in range(args.rounds):
        for _ in range(args.per_round // 8):
            handles = []
            for _ in range(8):
                prompt_ids = tokenizer.encode(prompt).input_ids if args.encode else ids
                handles.append(pipe.add_request(request_id, prompt_ids, config))
                request_id += 1
            while pipe.has_non_finished_requests():
                pipe.step()
            for handle in handles:
                handle.read_all()
        before = rss_mb()
        trim(0)
        print(f"round {round_no}: {request_id} requests, RSS {before} MB, after malloc_trim {rss_mb()} MB "
              f"({(rss_mb() - start) * 1024 / request_id:.1f} KB per request since the start)", flush=True)


if __name__ == "__main__":
    main()
