"""The download service sits beside pull/: it may use ovms.pull and aiohttp, never the serving stack."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVING = ("ovms.server", "ovms.transport", "ovms.registry", "ovms.dataplane", "ovms.protocol", "ovms.backends",
           "grpc", "openvino", "openvino_genai")


def test_download_service_imports_no_serving_code():
    code = ("import sys, json; import ovms.download.__main__, ovms.download.routes, ovms.download.openapi; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert [m for m in loaded if any(m == f or m.startswith(f + ".") for f in SERVING)] == []


def test_pull_does_not_import_the_download_service():
    offenders = [str(p) for p in (ROOT / "ovms" / "pull").rglob("*.py") if "ovms.download" in p.read_text()]
    assert offenders == []
