"""Models served from S3 (moto's S3 server on 127.0.0.1, the real boto3 on both sides): config.json on S3 with
relative paths, a GenAI graph directory, versions added, uploaded piece by piece and removed while a client
calls the model, and a missing bucket that leaves the other models serving."""
from __future__ import annotations

import json
import urllib.request

import numpy as np
import openvino as ov
import tritonclient.grpc as grpcclient

from tests.fixtures.models import dummy
from tests.genai.conftest import EMBEDDER_DIR, EMBEDDINGS_GRAPH
from tests.repository.conftest import S3_CREDENTIALS, upload_tree
from tests.test_cli import OvmsProcess
from tests.test_reload import infer_dummy, wait_for
from tests.test_version_swap import DefaultVersionClient


def states(server: OvmsProcess, model: str) -> dict[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/v1/config", timeout=10) as response:
        body = json.loads(response.read())
    return {v["version"]: v["state"] for v in body.get(model, {}).get("model_version_status", [])}


def test_serve_from_s3_with_versions_changing_live(s3, s3_endpoint, model_repo, tmp_path):
    client, bucket = s3
    upload_tree(client, bucket, model_repo / "dummy" / "1", "repo/dummy/1")
    upload_tree(client, bucket, model_repo / "simple", "repo/simple")
    (tmp_path / "emb" / "model").mkdir(parents=True)
    upload_tree(client, bucket, EMBEDDER_DIR, "repo/emb/model")
    client.put_object(Bucket=bucket, Key="repo/emb/graph.pbtxt", Body=EMBEDDINGS_GRAPH.format(path="model").encode())
    client.put_object(Bucket=bucket, Key="repo/config.json", Body=json.dumps({
        "model_config_list": [{"config": {"name": "dummy", "base_path": "dummy"}},
                              {"config": {"name": "simple", "base_path": f"s3://{bucket}/repo/simple"}},
                              {"config": {"name": "lost", "base_path": "s3://no-such-bucket/models/lost"}}],
        "mediapipe_config_list": [{"name": "emb", "base_path": "emb"}]}).encode())
    ov.save_model(dummy(2.0), str(tmp_path / "v2" / "model.xml"))
    ov.save_model(dummy(3.0), str(tmp_path / "v3" / "model.xml"))

    env = {**S3_CREDENTIALS, "S3_ENDPOINT": s3_endpoint}
    server = OvmsProcess(tmp_path, env, "--config_path", f"s3://{bucket}/repo/config.json",
                          "--model_repository_cache", str(tmp_path / "cache"), "--file_system_poll_wait_seconds", "1")
    try:
        log = server.wait_log("Server ready", timeout=120)
        # The missing bucket is one clear error naming the model and the URL; the others serve.
        assert "model lost: cannot use s3://no-such-bucket/models/lost: NoSuchBucket" in log
        url = f"127.0.0.1:{server.grpc_port}"
        with grpcclient.InferenceServerClient(url) as grpc_client, DefaultVersionClient(url) as caller:
            assert infer_dummy(grpc_client) == 1.0
            a = np.arange(16, dtype=np.int32).reshape(1, 16)
            inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
            for i in inputs:
                i.set_data_from_numpy(a)
            assert (grpc_client.infer("simple", inputs).as_numpy("OUTPUT0") == 2 * a).all()
            request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v3/embeddings", method="POST",
                                             data=json.dumps({"model": "emb", "input": "hello"}).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert len(json.loads(response.read())["data"][0]["embedding"]) > 8

            # Version 2 uploaded object by object, the weights last: served once complete, version 1 until then.
            client.upload_file(str(tmp_path / "v2" / "model.xml"), bucket, "repo/dummy/2/model.xml")
            server.wait_log("model dummy version 2 failed to load")
            client.upload_file(str(tmp_path / "v2" / "model.bin"), bucket, "repo/dummy/2/model.bin")
            wait_for(lambda: states(server, "dummy") == {"1": "END", "2": "AVAILABLE"}, timeout=30,
                     what="version 2 from S3")
            assert infer_dummy(grpc_client) == 2.0
            # An object of a served version replaced in the bucket does not disturb it; a new version does load.
            upload_tree(client, bucket, tmp_path / "v3", "repo/dummy/3")
            wait_for(lambda: states(server, "dummy").get("3") == "AVAILABLE", timeout=30, what="version 3")
            # Removed from the bucket: version 3 unloads, version 2 (still in the bucket) serves again.
            for name in ("model.xml", "model.bin"):
                client.delete_object(Bucket=bucket, Key=f"repo/dummy/3/{name}")
            wait_for(lambda: states(server, "dummy").get("3") == "END", timeout=30, what="version 3 END")
            wait_for(lambda: infer_dummy(grpc_client) == 2.0, timeout=30, what="version 2 again")
        assert caller.failures == [], caller.failures[:5]
        assert caller.answers and set(caller.answers) <= {1.0, 2.0, 3.0}
        # Nothing half-downloaded is left beside the copies.
        leftovers = [p for p in (tmp_path / "cache").rglob(".partial-*")]
        assert leftovers == []
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log.read_text()


def test_model_path_on_s3_and_a_missing_prefix(s3, s3_endpoint, model_repo, tmp_path):
    client, bucket = s3
    upload_tree(client, bucket, model_repo / "dummy", "single/dummy")
    env = {**S3_CREDENTIALS, "S3_ENDPOINT": s3_endpoint}
    server = OvmsProcess(tmp_path, env, "--model_name", "dummy", "--model_path", f"s3://{bucket}/single/dummy")
    try:
        server.wait_ready()
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as grpc_client:
            assert infer_dummy(grpc_client) == 2.0  # the demo dummy's version 2: b + 2
    finally:
        assert server.stop() == 0
    missing = OvmsProcess(tmp_path / "missing", env, "--model_name", "dummy", "--model_path",
                           f"s3://{bucket}/no/such/prefix")
    (tmp_path / "missing").mkdir()
    try:
        log = missing.wait_log(f"model dummy: cannot use s3://{bucket}/no/such/prefix: no objects under this path")
        assert "check the bucket name and the path" in log
    finally:
        missing.stop()
