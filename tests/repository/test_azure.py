"""Models served from Azure Blob Storage, read by ovms through the real azure-storage-blob client.

The store is an imitation (tests/repository/azure_imitation.py) of the few Blob REST calls that client makes for
ovms: List Blobs (paged with NextMarker, 2 blobs a page here so paging is exercised), Get Blob (with the ranges
the SDK asks for) and Shared Key authorization checked with the account key. It is an imitation because no Azure
Storage emulator installs from PyPI (Azurite is an npm package; the Python "Azure emulators" mock in-process or
do not speak the Blob REST protocol), so what Azure itself answers beyond these calls is not tested here.

Checked: config.json on Azure with a relative path and an azure:// URL, versions added and removed while a client
calls the model, a missing prefix and a missing container logged once each, and a wrong account key that is one
clear error per remote model while a local model keeps serving.
"""
from __future__ import annotations

import base64
import json

import openvino as ov
import tritonclient.grpc as grpcclient

from tests.fixtures.models import dummy
from tests.test_cli import OvmsProcess
from tests.repository.test_s3 import states
from tests.test_reload import infer_dummy, wait_for
from tests.test_version_swap import DefaultVersionClient


def test_serve_from_azure_with_versions_changing_live(azure, model_repo, tmp_path):
    store, container = azure
    store.put_tree(container, model_repo / "dummy" / "1", "repo/dummy/1")
    store.put_tree(container, model_repo / "simple", "repo/simple")
    store.put_blob(container, "repo/config.json", json.dumps({"model_config_list": [
        {"config": {"name": "dummy", "base_path": "dummy"}},
        {"config": {"name": "simple", "base_path": f"azure://{container}/repo/simple"}},
        {"config": {"name": "lost", "base_path": f"az://{container}/repo/no/such/prefix"}},
        {"config": {"name": "gone", "base_path": f"az://no-such-{container}/models/gone"}}]}).encode())
    ov.save_model(dummy(2.0), str(tmp_path / "v2" / "model.xml"))

    server = OvmsProcess(tmp_path, {"AZURE_STORAGE_CONNECTION_STRING": store.connection_string()},
                          "--config_path", f"az://{container}/repo/config.json",
                          "--model_repository_cache", str(tmp_path / "cache"), "--file_system_poll_wait_seconds", "1")
    try:
        log = server.wait_log("Server ready", timeout=120)
        lost = (f"model lost: cannot use az://{container}/repo/no/such/prefix: no objects under this path; "
                "check the bucket name and the path")
        gone = (f"model gone: cannot use az://no-such-{container}/models/gone: ContainerNotFound: "
                "The specified container does not exist. The model is not served")
        assert lost in log and gone in log, log[-4000:]
        url = f"127.0.0.1:{server.grpc_port}"
        with grpcclient.InferenceServerClient(url) as grpc_client, DefaultVersionClient(url) as caller:
            assert infer_dummy(grpc_client) == 1.0  # version 1: b + 1
            assert states(server, "simple") == {"1": "AVAILABLE"}
            # Version 2 added in the container: loaded, and the default version moves to it.
            store.put_tree(container, tmp_path / "v2", "repo/dummy/2")
            wait_for(lambda: states(server, "dummy") == {"1": "END", "2": "AVAILABLE"}, timeout=30,
                     what="version 2 from Azure")
            assert infer_dummy(grpc_client) == 2.0
            # Removed from the container: version 2 unloads and version 1 serves again.
            for name in ("model.xml", "model.bin"):
                store.delete_blob(container, f"repo/dummy/2/{name}")
            wait_for(lambda: states(server, "dummy").get("2") == "END", timeout=30, what="version 2 END")
            wait_for(lambda: infer_dummy(grpc_client) == 1.0, timeout=30, what="version 1 again")
        assert caller.failures == [], caller.failures[:5]
        assert caller.answers and set(caller.answers) <= {1.0, 2.0}
        log = server.log.read_text()
        assert log.count(lost) == 1 and log.count(gone) == 1, log[-4000:]
        assert "azure.core" not in log  # the SDK's request log (URL, headers) stays out of ours
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log.read_text()
    # The listings were paged (NextMarker followed) and the blobs read with the SDK's ranged Get Blob.
    mine = [r for r in store.requests if r["path"].startswith(f"/devstoreaccount1/{container}/")
            or r["path"] == f"/devstoreaccount1/{container}"]
    assert any("marker" in r["query"] for r in mine)
    assert any(r["range"] and r["status"] == 206 for r in mine)


def test_wrong_account_key_is_one_clear_error_while_a_local_model_serves(azure, model_repo, tmp_path):
    store, container = azure
    store.put_tree(container, model_repo / "dummy", "repo/dummy")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_config_list": [
        {"config": {"name": "dummy", "base_path": str(model_repo / "dummy")}},
        {"config": {"name": "remote", "base_path": f"az://{container}/repo/dummy"}}]}))
    wrong_key = base64.b64encode(b"not the account key, 64 bytes long, as real account keys are...").decode()
    server = OvmsProcess(tmp_path, {"AZURE_STORAGE_CONNECTION_STRING": store.connection_string(wrong_key)},
                          "--config_path", str(config), "--file_system_poll_wait_seconds", "1")
    error = (f"model remote: cannot use az://{container}/repo/dummy: AuthenticationFailed: Server failed to "
             "authenticate the request. Make sure the value of Authorization header is formed correctly including "
             "the signature (the AccountKey or SharedAccessSignature in AZURE_STORAGE_CONNECTION_STRING is not "
             "valid for this storage account). The model is not served")
    try:
        # Not /v2/health/ready: it stays false while a configured model is not served.
        server.wait_log("Server ready", timeout=120)
        log = server.wait_log(error)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as grpc_client:
            assert infer_dummy(grpc_client) == 2.0  # the local dummy's default version 2: b + 2
        # Polled every second, refused every time (each request signed anew): still one error line.
        wait_for(lambda: sum(r["status"] == 403 for r in store.requests
                             if r["path"].startswith(f"/devstoreaccount1/{container}")) >= 3, timeout=30,
                 what="three refused polls")
        log = server.log.read_text()
        assert log.count(error) == 1, log[-4000:]
        assert "string to sign" not in log and "RequestId" not in log
        assert "azure.core" not in log  # the SDK's request log (URL, headers) stays out of ours
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log.read_text()
