"""Models served from Google Cloud Storage: the GCS emulator of the gcp-storage-emulator package on 127.0.0.1,
written with the real google-cloud-storage client and read by ovms through the same client
(STORAGE_EMULATOR_HOST, anonymous credentials). config.json on GCS with a relative path, versions added and
removed while a client calls the model, and a missing prefix and a missing bucket that leave the others serving."""
from __future__ import annotations

import json
import time

import openvino as ov
import tritonclient.grpc as grpcclient

from tests.fixtures.models import dummy
from tests.repository.conftest import upload_tree
from tests.repository.test_s3 import states
from tests.test_cli import OvmsProcess, free_port
from tests.test_reload import infer_dummy, wait_for
from tests.test_version_swap import DefaultVersionClient


def test_serve_from_gcs_with_versions_changing_live(gcs, gcs_endpoint, model_repo, tmp_path):
    client, bucket = gcs
    upload_tree(client, bucket, model_repo / "dummy" / "1", "repo/dummy/1")
    missing_bucket = f"no-such-bucket-{bucket}"
    client.put_object(Bucket=bucket, Key="repo/config.json", Body=json.dumps({"model_config_list": [
        {"config": {"name": "dummy", "base_path": "dummy"}},
        {"config": {"name": "lost", "base_path": f"gs://{bucket}/repo/no/such/prefix"}},
        {"config": {"name": "gone", "base_path": f"gs://{missing_bucket}/models/gone"}}]}).encode())
    ov.save_model(dummy(2.0), str(tmp_path / "v2" / "model.xml"))

    server = OvmsProcess(tmp_path, {"STORAGE_EMULATOR_HOST": gcs_endpoint},
                          "--config_path", f"gs://{bucket}/repo/config.json",
                          "--model_repository_cache", str(tmp_path / "cache"), "--file_system_poll_wait_seconds", "1")
    try:
        log = server.wait_log("Server ready", timeout=120)
        # Each unusable path is one clear error naming the model and the URL; the others serve.
        lost = (f"model lost: cannot use gs://{bucket}/repo/no/such/prefix: no objects under this path; "
                "check the bucket name and the path")
        gone = f"model gone: cannot use gs://{missing_bucket}/models/gone: 404 Not Found"
        assert lost in log and gone in log and "(the bucket does not exist)" in log
        url = f"127.0.0.1:{server.grpc_port}"
        with grpcclient.InferenceServerClient(url) as grpc_client, DefaultVersionClient(url) as caller:
            assert infer_dummy(grpc_client) == 1.0  # version 1: b + 1
            # Version 2 added in the bucket: loaded, and the default version moves to it.
            upload_tree(client, bucket, tmp_path / "v2", "repo/dummy/2")
            wait_for(lambda: states(server, "dummy") == {"1": "END", "2": "AVAILABLE"}, timeout=30,
                     what="version 2 from GCS")
            assert infer_dummy(grpc_client) == 2.0
            # Removed from the bucket: version 2 unloads and version 1 (still in the bucket) serves again.
            for name in ("model.xml", "model.bin"):
                client.delete_object(Bucket=bucket, Key=f"repo/dummy/2/{name}")
            wait_for(lambda: states(server, "dummy").get("2") == "END", timeout=30, what="version 2 END")
            wait_for(lambda: infer_dummy(grpc_client) == 1.0, timeout=30, what="version 1 again")
        assert caller.failures == [], caller.failures[:5]
        assert caller.answers and set(caller.answers) <= {1.0, 2.0}
        # Polled every second for the whole test, the errors were still logged once each.
        log = server.log.read_text()
        assert log.count(lost) == 1 and log.count(gone) == 1, log[-4000:]
        assert [p for p in (tmp_path / "cache").rglob(".partial-*")] == []
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log.read_text()


def test_unreachable_endpoint_is_a_quick_clear_error(tmp_path):
    """Nothing listens at STORAGE_EMULATOR_HOST: the model's error says so in well under a minute (the client's
    default retry would block the first configuration for two minutes per model)."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    server = OvmsProcess(tmp_path, {"STORAGE_EMULATOR_HOST": endpoint}, "--model_name", "dummy",
                          "--model_path", "gs://models/dummy")
    started = time.monotonic()
    try:
        log = server.wait_log("model dummy: cannot use gs://models/dummy: ", timeout=60)
        assert time.monotonic() - started < 45
        assert f"cannot reach {endpoint}" in log and "Connection refused" in log, log[-2000:]
    finally:
        server.stop()
