"""Pull mode stands alone: it never imports the serving stack (STYLE.md, "pull/ ... never imports")."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

FORBIDDEN = ("ovms.server", "ovms.transport", "ovms.registry", "ovms.dataplane", "ovms.backends", "grpc",
             "aiohttp", "openvino")


def test_pull_imports_no_serving_code():
    code = ("import sys, json; import ovms.pull.cli, ovms.pull.__main__, ovms.pull.transfer; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []


def test_standalone_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "ovms.pull", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--pull", "--source_model", "--model_repository_path", "--task", "--overwrite_models",
                 "--gguf_filename", "--weight-format", "--extra_quantization_params", "--source_loras",
                 "--list_models", "--add_to_config", "--remove_from_config", "--max_num_seqs", "--pipeline_type",
                 "--enable_prefix_caching", "--cache_size", "--max_num_batched_tokens", "--tool_parser",
                 "--reasoning_parser", "--pooling", "--normalize", "--truncate", "--max_allowed_chunks"):
        assert flag in out.stdout, flag
    assert "GIT_LFS_RESUME_ATTEMPTS" in out.stdout
