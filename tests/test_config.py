"""config.json and version policy parsing: OVMS's schema, precise messages."""
from __future__ import annotations

import json
import pathlib

import pytest

from ovms.config import VersionPolicy, load_config_file, numeric_versions
from ovms.errors import ConfigError


def write(tmp_path, document) -> object:
    path = tmp_path / "config.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_valid_config_relative_paths(tmp_path):
    path = write(tmp_path, {"model_config_list": [
        {"config": {"name": "a", "base_path": "models/a", "nireq": 2, "target_device": "CPU",
                    "plugin_config": {"NUM_STREAMS": "1"}, "shape": {"x": "(1,3)"},
                    "model_version_policy": {"specific": {"versions": [1, 3]}}}}]})
    (model,) = load_config_file(path)
    assert model.base_path == tmp_path / "models" / "a"
    assert model.nireq == 2 and model.plugin_config == (("NUM_STREAMS", "1"),)
    assert model.version_policy.select([1, 2, 3, 4]) == [1, 3]


@pytest.mark.parametrize("document, message", [
    ("{", "The file is not valid json"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "colour": "red"}}]},
     "model_config_list[0].config: unknown field(s) 'colour'"),
    ({"model_configs": []}, "unknown top-level field(s) 'model_configs'"),
    ({"model_config_list": [{"config": {"base_path": "/m"}}]}, "required field 'name' is missing"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m"}},
                            {"config": {"name": "a", "base_path": "/n"}}]}, "model name 'a' is used twice"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "nireq": -1}}]}, "nireq must be an integer"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "shape": "1,2"}}]},
     "The provided shape is in wrong format"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "model_version_policy": {"newest": {}}}}]},
     "Model version policy contains unsupported key 'newest'"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "plugin_config": "[1]"}}]},
     "Plugin config is in wrong format"),
    ({"model_config_list": [{"name": "a", "base_path": "/m"}]}, 'must be an object with exactly one field, "config"'),
    # OVMS fields this server does not implement are refused by name, never accepted and ignored.
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "stateful": True}}]},
     "field 'stateful' is not supported by this server (stateful models were removed in OVMS 2026.3"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "max_sequence_number": 100}}]},
     "field 'max_sequence_number' is not supported"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "custom_loader_options": {"loader": "x"}}}]},
     "field 'custom_loader_options' is not supported by this server (custom model loaders"),
    ({"model_config_list": [{"config": {"name": "a", "base_path": "/m", "allow_cache": "yes"}}]},
     "allow_cache must be true or false"),
    ({"model_config_list": [], "pipeline_config_list": [{"name": "p"}]},
     "pipeline_config_list[0] (pipeline p): required field 'inputs' is missing"),
    ({"model_config_list": [], "pipeline_config_list": [{"name": "p", "inputs": ["x"], "outputs": [], "nodes": [
        {"name": "n", "type": "python", "inputs": [], "outputs": []}]}]},
     "nodes[0] (node n): Unsupported node type 'python'"),
    ({"model_config_list": [], "pipeline_config_list": [{"name": "p", "inputs": ["x"], "outputs": [], "nodes": [
        {"name": "n", "type": "custom", "library_name": "nolib", "inputs": [], "outputs": []}]}]},
     "Pipeline refers to incorrect library: 'nolib' is not in custom_node_library_config_list"),
    ({"model_config_list": [{"config": {"name": "p", "base_path": "/m"}}], "pipeline_config_list": [
        {"name": "p", "inputs": ["x"], "outputs": [], "nodes": []}]},
     "Pipeline has the same name as model: 'p'"),
    ({"model_config_list": [], "custom_node_library_config_list": [{"name": "lib", "base_path": "/libs/node.so"}]},
     "not a Python file. This server runs custom nodes written in Python, not C libraries (.so)"),
    ({"model_config_list": [], "custom_node_library_config_list": [{"name": "lib", "base_path": "/no/node.py"}]},
     "Custom node library not found: /no/node.py"),
    ({"mediapipe_config_list": [{"name": "g", "base_path": "/g", "subconfig": 7}]},
     "subconfig must be the path of a config.json with a model_config_list"),
])
def test_invalid_configs(tmp_path, document, message):
    with pytest.raises(ConfigError) as info:
        load_config_file(write(tmp_path, document))
    assert message in str(info.value)
    assert str(tmp_path / "config.json") in str(info.value)


def test_version_policies():
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy.parse({"latest": {"num_versions": 2}}, "x").select([1, 2, 3]) == [2, 3]
    assert VersionPolicy.parse('{"all": {}}', "x").select([2, 1]) == [1, 2]
    assert VersionPolicy.parse({"specific": {"versions": [5]}}, "x").select([1, 2]) == []
    with pytest.raises(ConfigError, match="positive integer num_versions"):
        VersionPolicy.parse({"latest": {"num_versions": 0}}, "x")


def test_numeric_versions_ignore_other_entries(tmp_path):
    for name in ("1", "10", "2", "latest", "0", "-3"):
        (tmp_path / name).mkdir()
    (tmp_path / "3").write_text("a file, not a directory")
    assert numeric_versions(tmp_path) == [1, 2, 10]


def test_default_valued_unimplemented_fields_are_accepted(tmp_path):
    path = write(tmp_path, {"model_config_list": [{"config": {"name": "a", "base_path": "m", "stateful": False,
                                                              "allow_cache": False}}],
                            "pipeline_config_list": [], "custom_loader_config_list": []})
    (model,) = load_config_file(path)
    assert model.allow_cache is False


def test_relative_config_path_applies_its_directory_once(tmp_path, monkeypatch):
    """`--config_path js/config.json` with relative base paths (graph_path relative to base_path, as OVMS):
    each relative path resolves against the config file's directory exactly once."""
    js = tmp_path / "js"
    for graph in ("tiny", "graph-model"):
        (js / graph).mkdir(parents=True)
        (js / graph / ("graph.pbtxt" if graph == "tiny" else "custom.pbtxt")).write_text("# a graph")
    (js / "config.json").write_text(json.dumps({
        "model_config_list": [{"config": {"name": "m", "base_path": "models/m"}},
                              {"config": {"name": "gm", "base_path": "graph-model", "graph_path": "custom.pbtxt"}}],
        "mediapipe_config_list": [{"name": "tiny", "base_path": "tiny"}, {"name": "named-only"}]}))
    (js / "named-only").mkdir()
    (js / "named-only" / "graph.pbtxt").write_text("# a graph")
    monkeypatch.chdir(tmp_path)
    models = {m.name: m for m in load_config_file(pathlib.Path("js/config.json"))}
    assert models["m"].base_path == js / "models" / "m"
    assert models["gm"].graph_path == js / "graph-model" / "custom.pbtxt"
    assert models["tiny"].base_path == js / "tiny" and models["tiny"].graph_path == js / "tiny" / "graph.pbtxt"
    assert models["named-only"].graph_path == js / "named-only" / "graph.pbtxt"
