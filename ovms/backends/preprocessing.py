"""Layouts and the preprocessing flags (``--mean``, ``--scale``, ``--color_format``, ``--precision``) as OpenVINO
PrePostProcessor steps, so they run inside the compiled model (OVMS 2026.0, src/modelinstance.cpp
applyLayoutConfiguration / applyPreprocessingConfiguration).

Order as OVMS: layouts; then on the model's (single) input: color conversion, element type conversion, mean, scale.
``--color_format BGR:RGB`` declares the client's tensor RGB and converts it to BGR; ``--precision uint8:fp32``
declares the client's tensor uint8 and converts it to fp32 (target first, source second, as OVMS parses them).
"""
from __future__ import annotations

import openvino as ov

from ovms.backends import ov_message as _first_line
from ovms.backends.model_files import NameMapping
from ovms.config import ModelConfig
from ovms.errors import ModelLoadError

_COLOR = {"RGB": "RGB", "BGR": "BGR", "GRAY": "GRAY", "NV12": "NV12_SINGLE_PLANE", "NV12_2": "NV12_TWO_PLANES",
          "I420": "I420_SINGLE_PLANE", "I420_3": "I420_THREE_PLANES"}
_ELEMENT = {"BF16": ov.Type.bf16, "FP64": ov.Type.f64, "FP32": ov.Type.f32, "FP16": ov.Type.f16,
            "INT64": ov.Type.i64, "INT32": ov.Type.i32, "INT16": ov.Type.i16, "INT8": ov.Type.i8, "INT4": ov.Type.i4,
            "UINT64": ov.Type.u64, "UINT32": ov.Type.u32, "UINT16": ov.Type.u16, "UINT8": ov.Type.u8,
            "UINT4": ov.Type.u4, "UINT1": ov.Type.u1}


def _layouts(model: ov.Model, config: ModelConfig, mapping: NameMapping) -> list[tuple[bool, str, str]]:
    """(is_input, model tensor name, "TENSOR[:MODEL]") triples; config names may be mapped names, as OVMS expects.

    A layout per name may name an output too (OVMS applies it with PrePostProcessor::output): the answer comes in
    the first layout, converted from the model's second one.
    """
    if config.layout is None:
        return []
    if isinstance(config.layout, str):
        return [(True, model.inputs[0].get_any_name(), config.layout)]
    inputs = {n for port in model.inputs for n in port.get_names()}
    outputs = {n for port in model.outputs for n in port.get_names()}
    triples = []
    for name, text in config.layout:
        real_input, real_output = mapping.real_input(name), mapping.real_output(name)
        if real_input in inputs:
            triples.append((True, real_input, text))
        elif real_output in outputs:
            triples.append((False, real_output, text))
        else:
            raise ModelLoadError(f"model {config.name}: Layout from config not found in model: {name!r}; inputs "
                                 f"are {sorted(inputs)}, outputs {sorted(outputs)}")
    return triples


def preprocess(model: ov.Model, config: ModelConfig, mapping: NameMapping) -> tuple[ov.Model, dict[str, str]]:
    """The model with layout and preprocessing steps built in, and the tensor layout of each input set."""
    layouts = _layouts(model, config, mapping)
    has_steps = any(v is not None for v in (config.mean, config.scale, config.color_format, config.precision))
    if not layouts and not has_steps:
        return model, {}
    ppp = ov.preprocess.PrePostProcessor(model)
    tensor_layouts = {}
    try:
        for is_input, name, text in layouts:
            served, _, model_layout = text.partition(":")
            step = ppp.input(name) if is_input else ppp.output(name)
            step.tensor().set_layout(ov.Layout(served))
            step.model().set_layout(ov.Layout(model_layout or served))
            if is_input:
                tensor_layouts[name] = served.upper()
    except RuntimeError as exc:
        raise ModelLoadError(f"model {config.name}: layout {config.layout!r} cannot be applied "
                             f"({_first_line(exc)}); use e.g. NCHW, or NHWC:NCHW to accept NHWC input") from None
    if has_steps:
        flags = [f"--{flag}" for flag, value in (("mean", config.mean), ("scale", config.scale),
                                                  ("color_format", config.color_format),
                                                  ("precision", config.precision)) if value is not None]
        if len(model.inputs) != 1:
            raise ModelLoadError(f"model {config.name}: {', '.join(flags)} apply to the model's only input, and "
                                 f"this model has {len(model.inputs)} inputs; preprocess in the client instead")
        step = ppp.input()
        try:
            if config.color_format is not None:
                target, source = config.color_format
                step.tensor().set_color_format(getattr(ov.preprocess.ColorFormat, _COLOR[source]))
                step.preprocess().convert_color(getattr(ov.preprocess.ColorFormat, _COLOR[target]))
            if config.precision is not None:
                target, source = config.precision
                step.tensor().set_element_type(_ELEMENT[target])
                step.preprocess().convert_element_type(_ELEMENT[source])
            if config.mean is not None:
                step.preprocess().mean(list(config.mean) if isinstance(config.mean, tuple) else config.mean)
            if config.scale is not None:
                step.preprocess().scale(list(config.scale) if isinstance(config.scale, tuple) else config.scale)
        except RuntimeError as exc:
            raise ModelLoadError(f"model {config.name}: Failed to configure input preprocessing ({', '.join(flags)})"
                                 f": {_first_line(exc)}") from None
    try:
        return ppp.build(), tensor_layouts
    except RuntimeError as exc:
        hint = ("; per-channel --mean/--scale need a layout with C (e.g. --layout NHWC:NCHW)"
                if has_steps else "")
        raise ModelLoadError(f"model {config.name}: Cannot change layout or preprocessing parameters "
                             f"({_first_line(exc)}){hint}") from None
