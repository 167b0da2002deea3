"""Pure pieces of pull mode: range planning, sidecars, path safety, tasks, GGUF names, graphs, config edits."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from ovms.pull import config_edit, graph, gguf, settings as pull_settings, state, tasks
from ovms.pull.errors import RepoNotFoundError, UnsafePathError, UsageError
from ovms.pull.hub import HubClient, RemoteFile
from ovms.pull.paths import check_repo_id, safe_join


@given(size=st.integers(0, 10**12), segment=st.integers(1 << 20, 1 << 30), most=st.integers(1, 16))
def test_segments_tile_the_file(size, segment, most):
    segs = state.plan_segments(size, segment, most)
    assert 1 <= len(segs) <= most
    assert segs[0].start == 0 and segs[-1].end == size
    for a, b in zip(segs, segs[1:]):
        assert a.end == b.start and a.end > a.start
    if size <= segment:
        assert len(segs) == 1


REMOTE = RemoteFile("sub/model.bin", 10_000, "b" * 40, "a" * 64)


@given(done=st.lists(st.integers(0, 2500), min_size=4, max_size=4))
def test_sidecar_round_trip(tmp_path_factory, done):
    final = tmp_path_factory.mktemp("sc") / "model.bin"
    segs = state.plan_segments(REMOTE.size, 2500, 4)
    for s, d in zip(segs, done):
        s.done = min(d, s.end - s.start)
    state.part_path(final).write_bytes(b"")
    state.save_sidecar(final, REMOTE, "c" * 40, segs)
    assert state.load_sidecar(final, REMOTE) == segs


def test_sidecar_for_other_content_or_without_part_is_ignored(tmp_path):
    final = tmp_path / "model.bin"
    segs = state.plan_segments(REMOTE.size, 2500, 4)
    state.save_sidecar(final, REMOTE, "c" * 40, segs)
    assert state.load_sidecar(final, REMOTE) is None  # no .lfs_part
    state.part_path(final).write_bytes(b"")
    other = RemoteFile(REMOTE.path, REMOTE.size, REMOTE.blob_sha1, "f" * 64)
    assert state.load_sidecar(final, other) is None
    state.sidecar_path(final).write_text("{not json")
    assert state.load_sidecar(final, REMOTE) is None


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/passwd", "a//b", "./x", "C:/x", "a\\..\\b",
                                  "x.lfs_part", ".ovms_pull.json", ""])
def test_names_escaping_the_model_dir_are_refused(tmp_path, name):
    with pytest.raises(UnsafePathError) as info:
        safe_join(tmp_path, name)
    assert "refusing to download" in str(info.value)


def test_safe_names_join(tmp_path):
    assert safe_join(tmp_path, "a/b/c.bin") == tmp_path / "a" / "b" / "c.bin"
    assert safe_join(tmp_path, "..hidden") == tmp_path / "..hidden"


@pytest.mark.parametrize("bad", ["noslash", "a/b/c", "../x", "a/..", "", "/abs"])
def test_repo_id_checked(bad):
    with pytest.raises(UsageError, match="ORG/NAME"):
        check_repo_id(bad)


@pytest.mark.parametrize("config,index,task", [
    (b'{"architectures": ["Qwen2ForCausalLM"]}', None, "text_generation"),
    (b'{"architectures": ["LlavaForConditionalGeneration"]}', None, "text_generation"),
    (b'{"architectures": ["XLMRobertaForSequenceClassification"]}', None, "rerank"),
    (b'{"architectures": ["BertModel"]}', None, "embeddings"),
    (None, b'{"_class_name": "StableDiffusionPipeline"}', "image_generation"),
])
def test_task_inference(config, index, task):
    assert tasks.infer_task(config, index) == task


@pytest.mark.parametrize("config", [None, b'{"architectures": ["WhisperForAudioClassification"]}', b"nope"])
def test_task_inference_failure_says_what_to_do(config):
    with pytest.raises(UsageError) as info:
        tasks.infer_task(config, None)
    assert info.value.message == "Could not infer model task - specify --task value explicitly"
    assert "--task" in info.value.remedy


def test_gguf_parts():
    assert gguf.part_names("m-Q4.gguf") == ["m-Q4.gguf"]
    assert gguf.part_names("m-Q8-00001-of-00003.gguf") == [
        "m-Q8-00001-of-00003.gguf", "m-Q8-00002-of-00003.gguf", "m-Q8-00003-of-00003.gguf"]
    files = [RemoteFile("m-Q4.gguf", 1, "x" * 40, "y" * 64), RemoteFile("other.gguf", 1, "x" * 40, "y" * 64)]
    with pytest.raises(RepoNotFoundError) as info:
        gguf.select(files, "m-Q5.gguf", "org/repo")
    assert "m-Q4.gguf, other.gguf" in info.value.remedy
    with pytest.raises(UsageError, match="only supported with --task text_generation"):
        gguf.check_filename("m.gguf", "embeddings")


def test_text_generation_graph_matches_ovms_layout():
    text = graph.render("text_generation", graph.GraphOptions(
        pipeline_type="VLM", max_num_batched_tokens=512, tool_parser="hermes3", kv_cache_precision="u8",
        dynamic_split_fuse="false", target_device="GPU"))
    assert text.startswith("# File created with: ")
    body = text.split("\n", 1)[1]
    assert """            max_num_seqs:256,
            device: "GPU",
            models_path: "./",
            plugin_config: '{"KV_CACHE_PRECISION":"u8"}',
            enable_prefix_caching: true,
            cache_size: 10,
            pipeline_type: VLM,
            max_num_batched_tokens: 512,
            tool_parser: "hermes3",
            dynamic_split_fuse: false,
        }
    }""" in body
    assert body.startswith('\n    input_stream: "HTTP_REQUEST_PAYLOAD:input"\n')
    assert body.endswith('tag_index: "LOOPBACK:0"\n            }\n        }\n        }\n    }\n    }')


def test_embeddings_and_rerank_graphs():
    e = graph.render("embeddings", graph.GraphOptions(model_name="emb", pooling="MEAN", normalize="false"))
    assert 'name: "emb",\n    calculator: "EmbeddingsCalculatorOV"' in e
    assert "normalize_embeddings: false,\n            truncate: false,\n            pooling: MEAN," in e
    assert """plugin_config: '{ "NUM_STREAMS": "1"}',""" in e
    r = graph.render("rerank", graph.GraphOptions(model_name="rr", max_allowed_chunks=7))
    assert 'calculator: "RerankCalculatorOV"' in r and "max_allowed_chunks: 7," in r
    i = graph.render("image_generation", graph.GraphOptions(resolution="512x512", guidance_scale=7.5))
    assert 'device: "CPU"\n          resolution: "512x512"\n          guidance_scale: 7.5\n      }\n  }\n}\n' in i


def test_config_add_remove_like_ovms(tmp_path):
    cfg = tmp_path / "config.json"
    config_edit.add_model(str(cfg), "a", "/models/a")
    config_edit.add_model(str(tmp_path), "b", "/models/b")  # a directory means its config.json
    data = json.loads(cfg.read_text())
    assert data == {"model_config_list": [{"config": {"name": "a", "base_path": "/models/a"}},
                                          {"config": {"name": "b", "base_path": "/models/b"}}]}
    assert cfg.read_text().startswith('{\n    "model_config_list": [')
    with pytest.raises(Exception, match="Model with the same name already exists"):
        config_edit.add_model(str(cfg), "a", "/x")
    config_edit.remove_model(str(cfg), "a")
    assert [e["config"]["name"] for e in json.loads(cfg.read_text())["model_config_list"]] == ["b"]
    with pytest.raises(Exception, match="doesn't have model with name: a"):
        config_edit.remove_model(str(cfg), "a")


def test_list_servables(tmp_path):
    (tmp_path / "OpenVINO" / "llm").mkdir(parents=True)
    (tmp_path / "OpenVINO" / "llm" / "graph.pbtxt").write_text("x")
    (tmp_path / "resnet" / "1").mkdir(parents=True)
    (tmp_path / "resnet" / "1" / "model.xml").write_text("x")
    (tmp_path / "empty" / "1").mkdir(parents=True)
    assert config_edit.list_servables(tmp_path) == ["OpenVINO/llm", "resnet"]


def test_settings_from_environment():
    s = pull_settings.from_environment({"HF_ENDPOINT": "http://mirror:8080/", "GIT_LFS_RESUME_ATTEMPTS": "0",
                                        "GIT_LFS_RESUME_INTERVAL_SECONDS": "2.5", "HF_TOKEN": "t"})
    assert (s.endpoint, s.resume_attempts, s.resume_interval, s.token, s.resume_enabled) == (
        "http://mirror:8080", 0, 2.5, "t", False)
    with pytest.raises(UsageError, match="GIT_LFS_RESUME_ATTEMPTS='many' is not a whole number"):
        pull_settings.from_environment({"GIT_LFS_RESUME_ATTEMPTS": "many"})
    with pytest.raises(UsageError, match="HF_ENDPOINT"):
        pull_settings.from_environment({"HF_ENDPOINT": "ftp://x"})


def test_tree_pagination_and_token_scope(hub, llm_repo):
    s = pull_settings.from_environment({"HF_ENDPOINT": hub.hub_url, "HF_TOKEN": "secret"})
    client = HubClient(s)
    try:
        files = client.list_files(llm_repo.repo_id, llm_repo.sha)
        assert client.auth_headers(hub.cdn_url + "/cdn/x") == []
        assert client.auth_headers(hub.hub_url + "/x") == ["Authorization: Bearer secret"]
    finally:
        client.close()
    assert sorted(f.path for f in files) == sorted(llm_repo.files)
    assert len([r for r in hub.requests if "/tree/" in r["path"]]) >= 4  # page size 3: followed Link headers
    by_path = {f.path: f for f in files}
    assert by_path["openvino_model.bin"].sha256 == llm_repo.files["openvino_model.bin"].sha256
    assert by_path["config.json"].sha256 is None


from ovms.pull import responses  # noqa: E402

SIZE = 1000


def verdict(status, headers=None, *, next_offset=0, end=SIZE, ranged=False, single=True):
    return responses.classify(status, headers or {}, next_offset=next_offset, segment_end=end, file_size=SIZE,
                              ranged=ranged, single_segment=single)


def test_response_decisions():
    assert verdict(302).action == responses.DISCARD
    assert verdict(503).action == responses.CAPTURE
    assert verdict(200, {"content-length": "1000"}).action == responses.WRITE
    assert verdict(206, {"content-range": "bytes 400-499/1000"}, next_offset=400, end=500,
                   ranged=True).action == responses.WRITE
    wrong_start = verdict(206, {"content-range": "bytes 0-99/1000"}, next_offset=400, end=500, ranged=True)
    assert wrong_start.action == responses.ABORT and "expected bytes 400-499/1000" in wrong_start.reason
    other_size = verdict(206, {"content-range": "bytes 400-499/999"}, next_offset=400, end=500, ranged=True)
    assert other_size.action == responses.ABORT
    assert verdict(200, {"content-length": "999"}).reason == "the server's copy is 999 bytes, the hub lists 1000"
    assert verdict(200, {}, next_offset=300, ranged=True, single=True).action == responses.RESTART_AT_ZERO
    assert verdict(200, {}, next_offset=300, end=500, ranged=True, single=False).action == responses.COLLAPSE
    assert verdict(204).action == responses.ABORT


@given(status=st.integers(100, 599), start=st.integers(0, SIZE - 1), ranged=st.booleans(), single=st.booleans(),
       header_start=st.integers(0, SIZE), header_total=st.integers(0, 2 * SIZE))
def test_a_body_is_written_only_when_it_is_the_bytes_asked_for(status, start, ranged, single, header_start,
                                                               header_total):
    headers = {"content-range": f"bytes {header_start}-{SIZE - 1}/{header_total}"}
    v = verdict(status, headers, next_offset=start, ranged=ranged, single=single)
    if v.action == responses.WRITE:
        assert (status == 206 and header_start == start and header_total == SIZE) or (status == 200 and
                                                                                       not ranged)
    if v.action == responses.RESTART_AT_ZERO:
        assert status == 200 and ranged and single
