"""Which file of a version directory OpenVINO reads, and the directory's ``mapping_config.json``.

OVMS (docs/models_repository_classic.md, src/modelinstance.cpp fetchModelFilepaths) takes, in this order: an
OpenVINO IR (.xml with its .bin), ONNX (.onnx), PaddlePaddle (.pdmodel with its .pdiparams), TensorFlow (.pb: a
SavedModel directory when the file is saved_model.pb, else a frozen graph) and TensorFlow Lite (.tflite). A
``base_path`` / ``--model_path`` may also name one such file: it is served as version 1.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

from ovms.config import SINGLE_FILE_SUFFIXES
from ovms.errors import ModelLoadError

MAPPING_FILE = "mapping_config.json"
# (pattern, name of the format) in OVMS's order of preference.
FORMATS = ((".xml", "OpenVINO IR"), (".onnx", "ONNX"), (".pdmodel", "PaddlePaddle"), (".pb", "TensorFlow"),
           (".tflite", "TensorFlow Lite"))
_HINT = ("put an OpenVINO IR (model.xml + model.bin), model.onnx, a PaddlePaddle model (model.pdmodel + "
         "model.pdiparams), a TensorFlow SavedModel (saved_model.pb + variables/) or frozen graph (model.pb), or "
         "model.tflite in each numeric version directory")


def model_source(path: pathlib.Path) -> str:
    """What to hand ``Core.read_model`` for a model file: a SavedModel is read from its directory."""
    if path.name == "saved_model.pb":
        return str(path.parent)
    return str(path)


def check_model_file(model: pathlib.Path) -> pathlib.Path:
    """The file to read for a model file named directly (its companion files must be beside it)."""
    suffix = model.suffix
    if suffix not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(f"{model}: Error loading model. Invalid model file; a model file path must end in "
                             f"{', '.join(SINGLE_FILE_SUFFIXES)}")
    if suffix == ".xml" and not model.with_suffix(".bin").is_file():
        raise ModelLoadError(f"{model}: the weights file {model.with_suffix('.bin').name} is missing")
    if suffix in (".pdmodel", ".pdiparams"):
        pdmodel, pdiparams = model.with_suffix(".pdmodel"), model.with_suffix(".pdiparams")
        if not (pdmodel.is_file() and pdiparams.is_file()):
            raise ModelLoadError(f"{model}: Error loading model. Missing .pdmodel or .pdiparams file; a "
                                 f"PaddlePaddle model needs both {pdmodel.name} and {pdiparams.name}")
        return pdmodel
    return model


def find_model_file(version_dir: pathlib.Path) -> pathlib.Path:
    """The model file of a version directory, in OVMS's order of formats."""
    for suffix, form in FORMATS:
        candidates = sorted(p for p in version_dir.glob(f"*{suffix}") if p.is_file())
        if not candidates:
            continue
        if suffix == ".pb" and (version_dir / "saved_model.pb").is_file():
            # A SavedModel directory also holds fingerprint.pb (TensorFlow >= 2.12): not a second model.
            candidates = [version_dir / "saved_model.pb"]
        if len(candidates) > 1:
            raise ModelLoadError(f"{version_dir}: several {form} model files found "
                                 f"({', '.join(p.name for p in candidates)}); keep one model per version directory")
        return check_model_file(candidates[0])
    raise ModelLoadError(f"{version_dir}: no model file found; {_HINT}")


@dataclasses.dataclass(frozen=True, slots=True)
class NameMapping:
    """``mapping_config.json``: model tensor name -> the name clients use, for inputs and for outputs."""

    inputs: dict[str, str] = dataclasses.field(default_factory=dict)
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)

    def real_input(self, name: str) -> str:
        """The model's name for an input named by its mapped name (or already by its real one)."""
        for real, mapped in self.inputs.items():
            if mapped == name:
                return real
        return name

    def real_output(self, name: str) -> str:
        for real, mapped in self.outputs.items():
            if mapped == name:
                return real
        return name


def read_mapping(directory: pathlib.Path) -> NameMapping:
    """The version directory's mapping_config.json (OVMS's format), or no renames when there is none.

    OVMS logs a broken file and serves the model under its own names; we refuse to load the version instead,
    so that clients never meet names they were not told about.
    """
    path = directory / MAPPING_FILE
    if not path.is_file():
        return NameMapping()
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: mapping configuration file is not a valid JSON file ({exc})") from None
    example = '{"inputs": {"model_tensor_name": "client_name"}, "outputs": {"model_tensor_name": "client_name"}}'
    if not isinstance(document, dict) or set(document) - {"inputs", "outputs"}:
        raise ModelLoadError(f"{path}: mapping configuration must be an object with only \"inputs\" and "
                             f"\"outputs\", e.g. {example}")
    sections = {}
    for section in ("inputs", "outputs"):
        value = document.get(section, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
            raise ModelLoadError(f"{path}: \"{section}\" must map tensor names to new names (strings), e.g. "
                                 f"{example}")
        if len(set(value.values())) != len(value):
            raise ModelLoadError(f"{path}: \"{section}\" gives two tensors the same name")
        sections[section] = dict(value)
    return NameMapping(**sections)
