"""OpenAI images endpoints as OVMS serves them: ``/v3/images/generations`` (JSON) and ``/v3/images/edits``
(multipart), decoded into neutral ``ImageRequest``s, and the ``{"data": [{"b64_json": ...}]}`` answer.

Field names, types and messages follow OVMS's imagegenutils.cpp (getImageGenerationRequestOptions,
getImageEditRequestOptions): OpenAI's fields this server cannot honour are refused as "Unhandled parameter", and
only ``b64_json`` answers exist. The graph's limits (max_resolution, max_num_images_per_prompt, ...) are checked by
the servable, which has the graph.
"""
from __future__ import annotations

import base64
import json

from ovms.genai.protocol.common import invalid
from ovms.genai.types import ImageRequest, ImageResult
from ovms.graph import parse_resolution

_STRINGS = ("prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3")
_INTS = ("num_images_per_prompt", "max_sequence_length")  # int32 in OVMS
_FLOATS = ("guidance_scale", "strength")
_INT64S = ("width", "height")
_SIZES = ("num_inference_steps", "rng_seed")  # size_t
_INT_KIND = {**dict.fromkeys(_INTS, "int"), **dict.fromkeys(_INT64S, "int64"), **dict.fromkeys(_SIZES, "size_t")}
_INT_RANGE = {"int": (-2 ** 31, 2 ** 31 - 1), "int64": (-2 ** 63, 2 ** 63 - 1), "size_t": (0, 2 ** 64 - 1)}
# OpenAI fields OVMS refuses by name (it writes PNG, has no moderation, background or styles)
_REFUSED = ("background", "moderation", "output_compression", "output_format", "quality", "style")
ACCEPTED = frozenset({"prompt", "prompt_2", "prompt_3", "image", "negative_prompt", "negative_prompt_2",
                      "negative_prompt_3", "size", "height", "width", "n", "num_images_per_prompt",
                      "response_format", "num_inference_steps", "rng_seed", "strength", "guidance_scale",
                      "max_sequence_length", "model", "lora_alphas"})
ACCEPTED_EDIT = ACCEPTED | {"mask"}


def _integer(name: str, value, kind: str, text: bool) -> int:
    low, high = _INT_RANGE[kind]
    if text:  # multipart: every field is text
        try:
            value = int(value.strip())
        except ValueError:
            raise invalid(f"{name} field is not a {kind if kind != 'int' else 'int32'}") from None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid(f"{name} field is not a {kind}")
    return value


def _float(name: str, value, text: bool) -> float:
    if text:
        try:
            return float(value)
        except ValueError:
            raise invalid(f"{name} field is not a float") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise invalid(f"{name} field is not a float")
    return float(value)


def _options(fields: dict, *, accepted: frozenset, text: bool) -> dict:
    """The pipeline options of a request's fields (JSON values, or multipart text), in OVMS's order of checks."""
    options: dict = {}
    size = fields.get("size")
    if size is not None:
        if not isinstance(size, str):
            raise invalid("size field is not a string")
        if size != "auto":
            try:
                options["width"], options["height"] = parse_resolution(size, field="size")
            except ValueError as exc:
                raise invalid(str(exc)) from None
    for name in _STRINGS:
        value = fields.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise invalid(f"{name} field is not a string")
            options[name] = value
    response_format = fields.get("response_format")
    if response_format is not None and response_format != "b64_json":
        raise invalid(f"Unsupported response_format: {response_format}. Only b64_json is supported.")
    if fields.get("n") is not None:
        options["num_images_per_prompt"] = _integer("n", fields["n"], "int", text)
    for name in (*_INTS, *_INT64S, *_SIZES):
        value = fields.get(name)
        if value is None:
            continue
        if name in options:  # n and num_images_per_prompt, size and width or height
            raise invalid(f"Key: {name} already exists in request options.")
        options[name] = _integer(name, value, _INT_KIND[name], text)
    for name in _FLOATS:
        if fields.get(name) is not None:
            options[name] = _float(name, fields[name], text)
    for name in _REFUSED:
        if name in fields:
            raise invalid(f"Unhandled parameter: {name}")
    for name in fields:
        if name not in accepted:
            raise invalid(f"Unhandled parameter: {name}")
    return options


def _lora_alphas(value) -> dict[str, float]:
    if value is None:
        return {}
    if isinstance(value, str):  # a multipart field carries it as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise invalid("lora_alphas field must be valid JSON") from None
    if not isinstance(value, dict):
        raise invalid("lora_alphas must be an object")
    alphas = {}
    for alias, alpha in value.items():
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
            raise invalid(f"lora_alphas value for '{alias}' must be a number")
        alphas[alias] = float(alpha)
    return alphas


def _model(fields: dict) -> str:
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model field is missing in request" if model is None else "model field is not a string")
    return model


def decode_image_generation(doc: dict) -> ImageRequest:
    """``POST /v3/images/generations``: a JSON object."""
    model = _model(doc)
    if "prompt" not in doc:
        raise invalid("prompt field is missing in JSON body")
    if not isinstance(doc["prompt"], str):
        raise invalid("prompt field is not a string")
    if "image" in doc:
        raise invalid("image field is not supported in /images/generations; send the image to /images/edits")
    options = _options(doc, accepted=ACCEPTED, text=False)
    return ImageRequest(model, doc["prompt"], options, lora_alphas=_lora_alphas(doc.get("lora_alphas")))


def decode_image_edit(fields: dict[str, str], files: dict[str, list[bytes]]) -> ImageRequest:
    """``POST /v3/images/edits``: multipart/form-data text fields and uploaded files (one image, optional mask)."""
    fields = {name: value for name, value in fields.items() if value != ""}  # OVMS: an empty field is absent
    model = _model(fields)
    prompt = fields.get("prompt")
    if not prompt:
        raise invalid("prompt field is missing in multipart body")
    if "image[]" in files or len(files.get("image", ())) > 1:
        raise invalid("image: an array of images is not supported; send one image")
    if len(files.get("mask", ())) > 1:
        raise invalid("mask: send one mask")
    image = (files.get("image") or [b""])[0]
    if not image:
        raise invalid("Image field is missing in multipart body")
    uploads = {name: "(a file)" for name in files if name not in ("image", "mask")}  # any other file is unhandled
    options = _options({**fields, **uploads}, accepted=ACCEPTED_EDIT, text=True)
    mask = (files.get("mask") or [b""])[0] or None
    return ImageRequest(model, prompt, options, image=image, mask=mask,
                        lora_alphas=_lora_alphas(fields.get("lora_alphas")))


def images_json(result: ImageResult, created: int) -> dict:
    """OVMS's answer ({"data": [{"b64_json": ...}]}), with OpenAI's ``created`` time."""
    return {"created": created, "data": [{"b64_json": base64.b64encode(image).decode()} for image in result.images]}
