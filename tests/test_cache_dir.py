"""--cache_dir: OpenVINO's compiled-model cache is written for the models that may use it, and used on restart."""
from __future__ import annotations

import json

import numpy as np
import tritonclient.grpc as grpcclient

from tests.genai.conftest import LLM_DIR, LLM_GRAPH
from tests.test_cli import serve, stop, wait_ready


def cached_files(cache):
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def test_cache_dir_caches_allowed_models_and_is_reused(model_repo, tmp_path):
    (tmp_path / "llm").mkdir()
    (tmp_path / "llm" / "graph.pbtxt").write_text(LLM_GRAPH.format(path=LLM_DIR, max_num_seqs=2))
    entries = {"simple": {}, "dummy": {"allow_cache": False}, "dynamic": {"shape": "auto"}}
    config = {"model_config_list": [{"config": {"name": n, "base_path": str(model_repo / n), **extra}}
                                    for n, extra in entries.items()],
              "mediapipe_config_list": [{"name": "llm", "base_path": str(tmp_path / "llm")}]}
    llm = config.pop("mediapipe_config_list")
    cache = tmp_path / "cache" / "made-by-the-server"

    def run(log_name: str) -> list[str]:
        process, grpc_port, rest_port = serve("--config_path", str(tmp_path / "config.json"), "--cache_dir",
                                              str(cache), log_path=tmp_path / log_name)
        try:
            wait_ready(rest_port, process, timeout=120)
            with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                a = np.arange(16, dtype=np.int32).reshape(1, 16)
                inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
                for i in inputs:
                    i.set_data_from_numpy(a)
                assert (client.infer("simple", inputs).as_numpy("OUTPUT0") == 2 * a).all()
        finally:
            stop(process)
        return cached_files(cache)

    # Classic models only: simple is cached; dummy (allow_cache false) and dynamic (shape auto: its compiled form
    # changes with each request shape) are not.
    (tmp_path / "config.json").write_text(json.dumps(config))
    classic = run("classic.log")
    assert len([f for f in classic if f.endswith(".blob")]) == 1, classic
    # With the LLM graph: its language model is cached too.
    (tmp_path / "config.json").write_text(json.dumps({**config, "mediapipe_config_list": llm}))
    first = run("first.log")
    assert len([f for f in first if f.endswith(".blob")]) == 2 and set(classic) < set(first), first
    second = run("second.log")
    assert second == first  # the restart read the cache and wrote nothing new
