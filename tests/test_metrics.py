"""/metrics scraped and parsed with prometheus_client's parser; counts checked against requests sent; and
Triton's statistics extension that perf_analyzer reads."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from ovms.metrics import ALL_FAMILIES, BUCKETS_US
from tests.conftest import ThreadedServer


@pytest.fixture(scope="module")
def metrics_server(model_repo):
    with ThreadedServer(config_path=model_repo / "config.json", metrics_families=frozenset(ALL_FAMILIES)) as s:
        yield s


def scrape(server) -> dict:
    with urllib.request.urlopen(f"http://{server.rest_url}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    assert "# TYPE ovms_requests_success counter" in text  # OVMS's names, no _total
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, family, sample_name=None, **labels):
    for sample in families[family].samples:
        if (sample_name is None or sample.name == sample_name) and all(sample.labels.get(k) == v
                                                                       for k, v in labels.items()):
            return sample.value
    return 0.0


def test_counts_match_requests(metrics_server):
    a = np.ones((1, 16), np.int32)
    grpc_client = grpcclient.InferenceServerClient(metrics_server.grpc_url)
    http_client = httpclient.InferenceServerClient(metrics_server.rest_url)
    grpc_inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    http_inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for i in grpc_inputs + http_inputs:
        i.set_data_from_numpy(a)
    for _ in range(7):
        grpc_client.infer("simple", grpc_inputs)
    for _ in range(3):
        http_client.infer("simple", http_inputs)
    for _ in range(2):
        with pytest.raises(InferenceServerException):
            grpc_client.infer("simple", grpc_inputs[:1])
    grpc_client.get_model_metadata("simple")
    families = scrape(metrics_server)
    common = dict(name="simple", api="KServe", method="ModelInfer")
    assert value(families, "ovms_requests_success", interface="gRPC", version="1", **common) == 7
    assert value(families, "ovms_requests_success", interface="REST", version="1", **common) == 3
    assert value(families, "ovms_requests_fail", interface="gRPC", version="1", **common) == 2
    assert value(families, "ovms_requests_success", interface="gRPC", method="ModelMetadata", name="simple") == 1
    assert value(families, "ovms_request_time_us", "ovms_request_time_us_count", name="simple", version="1",
                 interface="gRPC") == 7
    assert value(families, "ovms_inference_time_us", "ovms_inference_time_us_count", name="simple",
                 version="1") == 10
    buckets = [s for s in families["ovms_inference_time_us"].samples
               if s.name.endswith("_bucket") and s.labels["name"] == "simple"]
    assert [s.labels["le"] for s in buckets] == [*map(str, BUCKETS_US), "+Inf"]
    assert BUCKETS_US[:6] == [10, 18, 32, 58, 104, 188]  # floor(10 * 1.8^i), as OVMS
    assert buckets[-1].value == 10
    assert value(families, "ovms_streams", name="simple", version="1") >= 1
    assert value(families, "ovms_infer_req_queue_size", name="identity16", version="1") == 4
    assert value(families, "ovms_current_requests", name="simple", version="1") == 0


def test_tfs_and_unknown_models(metrics_server):
    request = urllib.request.Request(f"http://{metrics_server.rest_url}/v1/models/dummy/versions/1:predict",
                                     data=json.dumps({"instances": [[0.0] * 10]}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass
    unknown = urllib.request.Request(f"http://{metrics_server.rest_url}/v1/models/ghost:predict",
                                     data=b'{"instances": [[1]]}', method="POST")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(unknown, timeout=10)
    families = scrape(metrics_server)
    assert value(families, "ovms_requests_success", api="TensorFlowServing", interface="REST", method="Predict",
                 name="dummy", version="1") == 1
    assert not any(s.labels.get("name") == "ghost" for f in families.values() for s in f.samples)


def test_triton_statistics(metrics_server):
    client = grpcclient.InferenceServerClient(metrics_server.grpc_url)
    x = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    before = client.get_inference_statistics("identity16", as_json=True)["model_stats"][0]
    for _ in range(5):
        client.infer("identity16", [x])
    after = client.get_inference_statistics("identity16", as_json=True)["model_stats"][0]
    assert after["version"] == "1"
    assert int(after["inference_stats"]["success"]["count"]) - int(before["inference_stats"]
                                                                   .get("success", {}).get("count", 0)) == 5
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    http = httpclient.InferenceServerClient(metrics_server.rest_url).get_inference_statistics("identity16")
    assert http["model_stats"][0]["inference_stats"]["success"]["count"] >= 5


def test_metrics_off_by_default(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{server.rest_url}/metrics", timeout=10)
    assert info.value.code == 400
