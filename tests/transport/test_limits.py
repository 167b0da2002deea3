"""Limits that protect the process: calls per gRPC connection (--grpc_channel_arguments, as in OVMS)."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import openvino as ov
import tritonclient.grpc as grpcclient

from tests.test_cli import serve, stop, wait_ready
from tests.test_drain import current_requests, slow_model


def test_calls_per_connection_are_bounded_and_the_rest_wait(tmp_path):
    ov.save_model(slow_model(), str(tmp_path / "slow" / "1" / "model.xml"), compress_to_fp16=False)
    (tmp_path / "config.json").write_text(json.dumps({"model_config_list": [{"config": {
        "name": "slow", "base_path": str(tmp_path / "slow"), "nireq": 4,
        "plugin_config": {"INFERENCE_PRECISION_HINT": "f32"}}}]}))
    process, grpc_port, rest_port = serve("--config_path", str(tmp_path / "config.json"), "--metrics_enable",
                                          "--metrics_list", "ovms_current_requests", "--grpc_channel_arguments",
                                          "grpc.max_concurrent_streams=2", log_path=tmp_path / "ovms.log")
    try:
        wait_ready(rest_port, process)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")  # one connection
        x = grpcclient.InferInput("x", [1, 1], "FP32")
        x.set_data_from_numpy(np.ones((1, 1), np.float32))
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(client.infer("slow", [x]).as_numpy("y")))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        seen = []
        deadline = time.monotonic() + 60
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            seen.append(current_requests(rest_port, "slow"))  # its own connection: not counted against the 2
            time.sleep(0.05)
        for thread in threads:
            thread.join(10)
        assert len(answers) == 4  # the calls beyond the limit waited, none failed
        assert max(seen) == 2, seen  # never more than 2 in the server at once from that connection
    finally:
        stop(process)
