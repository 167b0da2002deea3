"""The Hub imitation speaks the real protocol: huggingface_hub downloads from it what ovms pulls."""
from __future__ import annotations

import pytest
from huggingface_hub import hf_hub_download, snapshot_download

from conftest import assert_pulled, tiny_llm_files

REPO = "OpenVINO/tiny-llm-ov"


@pytest.fixture(autouse=True)
def isolated_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def test_snapshot_download_matches_ovms_pull(hub, llm_repo, big_files, pull, tmp_path):
    local = snapshot_download(REPO, endpoint=hub.hub_url, local_dir=tmp_path / "hf", token="hf_test_token")
    files = tiny_llm_files(big_files)
    for path, expected in files.items():
        data = expected if isinstance(expected, bytes) else expected.read_bytes()
        assert (tmp_path / "hf" / path).read_bytes() == data, path
    assert str(local) == str(tmp_path / "hf")
    # It used the same endpoints ovms uses, and followed the redirect to the other origin without the token.
    paths = [r["path"] for r in hub.requests]
    assert f"/api/models/{REPO}/revision/main" in paths
    assert any(p.startswith(f"/api/models/{REPO}/tree/{llm_repo.sha}") for p in paths)
    assert all(r["auth"] is None for r in hub.requests if r["origin"] == "cdn")
    assert any(r["origin"] == "cdn" for r in hub.requests)
    run = pull(REPO, "--task", "text_generation")
    assert run.code == 0, run.output
    assert_pulled(pull.models / "OpenVINO" / "tiny-llm-ov", files)


def test_hf_hub_download_single_lfs_file(hub, llm_repo, big_files, tmp_path):
    path = hf_hub_download(REPO, "openvino_model.bin", endpoint=hub.hub_url, cache_dir=tmp_path / "cache")
    assert open(path, "rb").read() == big_files["model8m.bin"].read_bytes()


def test_hf_sees_gated_and_missing_repos(hub, llm_repo, tmp_path):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    hub.add_repo("meta/gated", {"w.bin": b"x" * 10}, gated=True)
    with pytest.raises(GatedRepoError):
        hf_hub_download("meta/gated", "w.bin", endpoint=hub.hub_url, cache_dir=tmp_path / "c")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("nobody/nothing", endpoint=hub.hub_url, cache_dir=tmp_path / "c")
