"""Image generation: the graph's options checked at load, the request fields decoded, and the graph's limits
applied per request, each with the message a user sees (OVMS's where it has one)."""
from __future__ import annotations

import pathlib

import pytest

from ovms.backends.genai_images import checked_options
from ovms.errors import ConfigError, ServingError
from ovms.genai import protocol as codec
from ovms.graph import ImageGenLimits, read_graph_text

NODE = """node {{ calculator: "ImageGenCalculator" node_options: {{
  [type.googleapis.com / mediapipe.ImageGenCalculatorOptions]: {{ models_path: "./sd" {options} }} }} }}"""


def read(options: str):
    return read_graph_text(NODE.format(options=options), pathlib.Path("/models"))


def test_graph_options_and_defaults():
    node = read('max_resolution: "512x256" default_resolution: "256x128" max_num_images_per_prompt: 2 '
                'default_num_inference_steps: 9 max_num_inference_steps: 20 '
                'lora_adapters { alias: "ink" path: "loras/ink.safetensors" alpha: 0.5 } '
                'composite_lora_adapters { alias: "mix" components { adapter_alias: "ink" alpha: 0.3 } }')
    assert node.task == "image_generation" and node.models_path == pathlib.Path("/models/sd")
    limits = node.image
    assert (limits.max_resolution, limits.default_resolution) == ((512, 256), (256, 128))
    assert (limits.max_num_images_per_prompt, limits.default_num_inference_steps,
            limits.max_num_inference_steps) == (2, 9, 20)
    assert [(a.alias, a.path, a.alpha) for a in limits.lora_adapters] == [
        ("ink", pathlib.Path("/models/loras/ink.safetensors"), 0.5)]
    assert limits.composite_lora_adapters == {"mix": [("ink", 0.3)]}
    default = read("").image
    assert (default.max_resolution, default.default_resolution, default.max_num_images_per_prompt,
            default.default_num_inference_steps, default.max_num_inference_steps) == ((4096, 4096), None, 10, 50, 100)


@pytest.mark.parametrize("options, message", [
    ('resolution: "512x512"', "graph option resolution (static reshape"),
    ("num_images_per_prompt: 2", "graph option num_images_per_prompt (static reshape"),
    ('max_resolution: "512"', "graph option max_resolution field is not in correct format - WxH"),
    ('max_resolution: "256x256" default_resolution: "512x512"',
     "Default resolution exceeds maximum allowed resolution: (512x512) > (256x256)"),
    ("max_num_inference_steps: 0", "graph option max_num_inference_steps must be a positive integer"),
    ('lora_adapters { alias: "a" path: "a.safetensors" mode: FUSE }', "mode FUSE is not supported"),
    ('composite_lora_adapters { alias: "m" components { adapter_alias: "nope" } }',
     "adapter_alias 'nope' is not one of the lora_adapters (none)"),
    ("max_num_seqs: 4", "graph node option(s) max_num_seqs unknown to OVMS's image_generation calculator"),
])
def test_graph_refusals_name_the_option(options, message):
    with pytest.raises(ConfigError) as caught:
        read(options)
    assert message in str(caught.value)


def test_limits_add_the_graph_defaults():
    limits = ImageGenLimits(default_resolution=(128, 96), default_num_inference_steps=7)
    assert checked_options({}, limits) == {"width": 128, "height": 96, "num_inference_steps": 7}
    assert checked_options({"width": 64, "num_inference_steps": 3}, limits) == {
        "width": 64, "height": 96, "num_inference_steps": 3}


@pytest.mark.parametrize("options, message", [
    ({"num_images_per_prompt": 11}, "num_images_per_prompt/n is greater than maxNumImagesPerPrompt: 10"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt/n must be higher than 0"),
    ({"num_inference_steps": 101}, "num_inference_steps is greater than maxNumInferenceSteps: 100"),
    ({"width": 4097}, "resolution 4097x(model default) is greater than maxResolution: 4096x4096"),
    ({"height": 0}, "height must be higher than 0"),
    ({"strength": 1.5}, "strength is greater than maxStrength: 1"),
    ({"strength": -0.1}, "strength is less than minStrength: 0"),
])
def test_limits_refuse_with_ovms_messages(options, message):
    with pytest.raises(ServingError) as caught:
        checked_options(options, ImageGenLimits())
    assert caught.value.http_status == 400 and message in caught.value.message


def test_generation_fields_decode():
    request = codec.decode_image_generation({
        "model": "sd", "prompt": "a cat", "size": "64x32", "n": 2, "rng_seed": 5, "num_inference_steps": 3,
        "guidance_scale": 7, "negative_prompt": "dog", "response_format": "b64_json", "lora_alphas": {"ink": 0.2}})
    assert (request.model, request.prompt, request.lora_alphas) == ("sd", "a cat", {"ink": 0.2})
    assert request.options == {"width": 64, "height": 32, "num_images_per_prompt": 2, "rng_seed": 5,
                               "num_inference_steps": 3, "guidance_scale": 7.0, "negative_prompt": "dog"}
    assert codec.decode_image_generation({"model": "sd", "prompt": "x", "size": "auto"}).options == {}


@pytest.mark.parametrize("fields, message", [
    ({}, "prompt field is missing in JSON body"),
    ({"prompt": 3}, "prompt field is not a string"),
    ({"prompt": "x", "n": 2, "num_images_per_prompt": 2}, "Key: num_images_per_prompt already exists"),
    ({"prompt": "x", "size": "64x64", "width": 64}, "Key: width already exists"),
    ({"prompt": "x", "n": "2"}, "n field is not a int"),
    ({"prompt": "x", "rng_seed": -1}, "rng_seed field is not a size_t"),
    ({"prompt": "x", "guidance_scale": "high"}, "guidance_scale field is not a float"),
    ({"prompt": "x", "size": "0x64"}, "size field values must be greater than 0"),
    ({"prompt": "x", "style": "vivid"}, "Unhandled parameter: style"),
    ({"prompt": "x", "seed": 1}, "Unhandled parameter: seed"),
    ({"prompt": "x", "lora_alphas": {"a": "big"}}, "lora_alphas value for 'a' must be a number"),
])
def test_generation_refusals(fields, message):
    with pytest.raises(ServingError) as caught:
        codec.decode_image_generation({"model": "sd", **fields})
    assert caught.value.http_status == 400 and message in caught.value.message


def test_edit_fields_decode_from_multipart_text():
    request = codec.decode_image_edit({"model": "sd", "prompt": "a cat", "n": "2", "strength": "0.6",
                                       "rng_seed": "9", "size": "", "lora_alphas": '{"ink": 1}'},
                                      {"image": [b"PNG"], "mask": [b"MASK"]})
    assert (request.image, request.mask) == (b"PNG", b"MASK")
    assert request.options == {"num_images_per_prompt": 2, "strength": 0.6, "rng_seed": 9}
    assert request.lora_alphas == {"ink": 1.0}


@pytest.mark.parametrize("fields, files, message", [
    ({}, {"image": [b"x"]}, "prompt field is missing in multipart body"),
    ({"prompt": "x"}, {}, "Image field is missing in multipart body"),
    ({"prompt": "x"}, {"image[]": [b"a", b"b"]}, "an array of images is not supported"),
    ({"prompt": "x"}, {"image": [b"x"], "extra": [b"y"]}, "Unhandled parameter: extra"),
    ({"prompt": "x", "n": "two"}, {"image": [b"x"]}, "n field is not a int32"),
    ({"prompt": "x", "lora_alphas": "{"}, {"image": [b"x"]}, "lora_alphas field must be valid JSON"),
])
def test_edit_refusals(fields, files, message):
    with pytest.raises(ServingError) as caught:
        codec.decode_image_edit({"model": "sd", **fields}, files)
    assert caught.value.http_status == 400 and message in caught.value.message
