"""``--list_models``, ``--add_to_config``, ``--remove_from_config``: the model repository and config.json.

Behaviour and messages after OVMS ``src/config_export_module/config_export.cpp``: a servable is a directory with
``graph.pbtxt`` (a MediaPipe graph) or with numeric version sub-directories holding model files; config.json
entries are ``{"config": {"name", "base_path"}}`` in ``model_config_list``, written pretty with 4 spaces.
"""
from __future__ import annotations

import json
import os
import pathlib

from ovms.pull.errors import PullError, UsageError

MODEL_EXTENSIONS = (".xml", ".onnx", ".pdmodel", ".pb", ".tflite", ".savedmodel")


def _is_version_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and path.name.isdigit() and not path.name.startswith("0")


def _has_model_files(path: pathlib.Path) -> bool:
    return any(p.suffix in MODEL_EXTENSIONS or p.name == "saved_model.pb" for p in path.iterdir())


def list_servables(repository: pathlib.Path) -> list[str]:
    """Names (paths relative to ``repository``) of every graph or versioned model below it."""
    found: list[str] = []

    def walk(directory: pathlib.Path) -> None:
        if not directory.is_dir() or directory.name.startswith("."):
            return
        if (directory / "graph.pbtxt").is_file():
            found.append(directory.relative_to(repository).as_posix())
            return
        if any(_is_version_dir(v) and _has_model_files(v) for v in directory.iterdir()):
            found.append(directory.relative_to(repository).as_posix())
            return
        for child in sorted(directory.iterdir()):
            walk(child)

    if not repository.is_dir():
        raise UsageError(f"Path is not a directory: {repository}",
                         remedy="Pass the directory that holds your models as --model_repository_path.")
    for child in sorted(repository.iterdir()):
        walk(child)
    return sorted(found)


def config_file(config_path: str) -> pathlib.Path:
    path = pathlib.Path(config_path)
    return path / "config.json" if path.is_dir() else path


def _load(path: pathlib.Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise PullError(f"Configuration file is not in valid configuration format: {path} ({exc}).",
                        remedy="Fix the JSON (or move the file away to start a new one), then re-run.") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_config_list"), list):
        raise PullError(f"Configuration file {path} has no model_config_list array.",
                        remedy='Add "model_config_list": [] to it, then re-run.')
    return data


def _save(path: pathlib.Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=4))
    os.replace(tmp, path)


def add_model(config_path: str, name: str, base_path: str) -> pathlib.Path:
    path = config_file(config_path)
    if path.exists():
        data = _load(path)
        if any(isinstance(e, dict) and e.get("config", {}).get("name") == name for e in data["model_config_list"]):
            raise PullError(f"Could not add model to configuration file: {name}. Model with the same name "
                            "already exists.", remedy=f"Pick another --model_name, or remove it first with "
                                                      f"--remove_from_config --model_name {name}.")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"model_config_list": []}
    data["model_config_list"].append({"config": {"name": name, "base_path": base_path}})
    _save(path, data)
    return path


def remove_model(config_path: str, name: str) -> pathlib.Path:
    path = config_file(config_path)
    if not path.exists():
        raise PullError(f"Config path does not exist: {path}", remedy="Check --config_path.")
    data = _load(path)
    entries = data["model_config_list"]
    keep = [e for e in entries if not (isinstance(e, dict) and e.get("config", {}).get("name") == name)]
    if len(keep) == len(entries):
        raise PullError(f"Configuration file doesn't have model with name: {name}.",
                        remedy=f"Models in {path}: " + (", ".join(
                            str(e.get("config", {}).get("name")) for e in entries if isinstance(e, dict)) or "none"))
    # OVMS erases the first match only
    first = next(i for i, e in enumerate(entries) if e not in keep)
    del entries[first]
    _save(path, data)
    return path
