"""KServe v2 REST (JSON and the binary-data extension) <-> neutral types.

Binary extension (Triton / KServe "binary_tensor_data"): the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the tensors' bytes, each input saying its length in
``parameters.binary_data_size``. Outputs come back binary when ``parameters.binary_data`` is set on a requested
output or ``parameters.binary_data_output`` on the request.
"""
from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import orjson

from ovms._native import load
from ovms._native.codec_errors import CodecError
from ovms.dataplane import ServerMetadata
from ovms.errors import Kind, ServingError
from ovms.types import NUMPY_DTYPE, element_count, InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

_codec = load("tensorcodec")


def parse_json(body) -> object:
    """orjson (about 2.5x json's speed on large data arrays); json for the NaN/Infinity literals it refuses."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return json.loads(bytes(body))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ServingError(Kind.JSON_INVALID, f"request body is not valid JSON ({exc})") from None
        except RecursionError:
            raise ServingError(Kind.JSON_INVALID, "request body is nested too deeply to parse") from None


def _bad(details: str) -> ServingError:
    return ServingError(Kind.INVALID_INPUT_FORMAT, details)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise _bad(f"{where}: shape must be a list of integers")
    return tuple(value)


HEADER_LENGTH = "Inference-Header-Content-Length"


def header_length(value: str | None) -> int | None:
    """The binary extension's Inference-Header-Content-Length, as an int (None when the header is absent)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ServingError(Kind.INVALID_INPUT_FORMAT, f"{HEADER_LENGTH} must be an integer, got {value!r}") from None


def decode_infer_request(body: bytes, header_length: int | None, model_name: str,
                         version: int | None) -> tuple[InferRequest, set[str] | bool]:
    """Parse a REST infer body (JSON, or JSON header + binary tensors); also say which outputs go binary."""
    view = memoryview(body)
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise _bad(f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes")
        header_bytes, binary = view[:header_length], view[header_length:]
    else:
        header_bytes, binary = view, view[0:0]
    document = parse_json(header_bytes)
    if not isinstance(document, dict):
        raise ServingError(Kind.REST_BODY_IS_NOT_AN_OBJECT)
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad('"inputs" must be a non-empty list of input tensors')
    offset = 0
    inputs = []
    for index, item in enumerate(raw_inputs):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object with name, datatype, shape and data")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise _bad(f"{where}: name and datatype must be strings")
        if datatype not in NUMPY_DTYPE and datatype != "BF16":
            raise ServingError(Kind.INVALID_PRECISION, f"Unknown datatype: {datatype!r}; input name: {name}")
        shape = _shape(item.get("shape"), where)
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise _bad(f"{where}: parameters must be an object")
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise _bad(f"{where}: binary_data_size {size} runs past the binary part of the body "
                           f"({len(binary) - offset} bytes left); check Inference-Header-Content-Length")
            inputs.append(Tensor(name, datatype, shape, raw=binary[offset:offset + size]))
            offset += size
            continue
        if "data" not in item:
            if len(raw_inputs) == 1 and datatype == "BYTES" and len(binary):
                # OVMS (http_rest_api_handler.cpp): one BYTES input without binary_data_size takes the whole
                # binary part, e.g. a length-prefixed JPEG appended by curl.
                inputs.append(Tensor(name, datatype, shape, raw=binary))
                offset = len(binary)
                continue
            raise _bad(f"{where}: no data; send \"data\" or parameters.binary_data_size with a binary body")
        try:
            if datatype == "BYTES" and _first_is_object(item["data"]):
                array = _b64_array(item["data"], shape)
            else:
                array = _codec.json_to_array(item["data"], datatype, shape)
        except CodecError as exc:
            raise ServingError(Kind.INVALID_VALUE_COUNT, f"{exc}; input name: {name}") from None
        inputs.append(Tensor(name, datatype, shape, array=array))
    if offset != len(binary):
        raise _bad(f"the body has {len(binary) - offset} bytes after the last binary input")
    requested, binary_outputs = _requested_outputs(document)
    request_id = document.get("id", "")
    parameters = document.get("parameters") if isinstance(document.get("parameters"), dict) else None
    request = InferRequest(model_name, version, inputs, str(request_id) if request_id is not None else "",
                           requested, parameters)
    return request, binary_outputs


def _first_is_object(data: Any) -> bool:
    while isinstance(data, list) and data:
        data = data[0]
    return isinstance(data, dict)


def _b64_array(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    """BYTES data holding {"b64": "..."} objects (as TFS REST has them): binary values such as JPEG images, which
    a JSON string cannot carry. An extension: OVMS takes JSON strings only."""
    items: list[bytes] = []

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for element in value:
                walk(element)
        elif isinstance(value, str):
            items.append(value.encode())
        elif isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                items.append(base64.b64decode(value["b64"], validate=True))
            except ValueError:
                raise CodecError("a b64 value is not valid base64") from None
        else:
            raise CodecError('BYTES data items must be strings or {"b64": "<base64>"} objects')
    if not isinstance(data, list):
        raise CodecError("data must be a JSON array")
    walk(data)
    count = element_count(shape)
    if len(items) != count:
        raise CodecError(f"Expected: {count} BYTES elements; Actual: {len(items)}")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def _requested_outputs(document: dict) -> tuple[list[str] | None, set[str] | bool]:
    """Names of requested outputs and which of them go binary (True: all)."""
    parameters = document.get("parameters")
    all_binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    outputs = document.get("outputs")
    if outputs is None:
        return None, all_binary
    if not isinstance(outputs, list):
        raise _bad('"outputs" must be a list of objects with a name')
    names, binary = [], set()
    for index, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"outputs[{index}] must be an object with a name")
        names.append(item["name"])
        params = item.get("parameters") or {}
        if isinstance(params, dict) and params.get("binary_data", all_binary) is True:
            binary.add(item["name"])
    return (names or None), (binary if names else all_binary)


def encode_infer_response(response: InferResponse, binary: set[str] | bool) -> tuple[bytes, int | None]:
    """Response body and, when tensors are binary, the JSON header length."""
    parts = []
    blobs = []
    for tensor in response.outputs:
        head = (f'{{"name":{json.dumps(tensor.name)},"datatype":"{tensor.datatype}",'
                f'"shape":[{",".join(map(str, tensor.shape))}]')
        if binary is True or (binary and tensor.name in binary):
            blob = tensor.as_raw()
            blobs.append(blob)
            parts.append(f'{head},"parameters":{{"binary_data_size":{len(blob)}}}}}')
        else:
            parts.append(f'{head},"data":{_codec.array_to_json(tensor.as_array(), tensor.datatype)}}}')
    header = (f'{{"model_name":{json.dumps(response.model_name)},"model_version":"{response.model_version}",'
              + (f'"id":{json.dumps(response.id)},' if response.id else "")
              + f'"outputs":[{",".join(parts)}]}}').encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _spec_json(spec: TensorSpec) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata_json(meta: ModelMetadata) -> dict:
    return {"name": meta.name, "versions": meta.versions, "platform": meta.platform,
            "inputs": [_spec_json(s) for s in meta.inputs], "outputs": [_spec_json(s) for s in meta.outputs]}


def server_metadata_json(meta: ServerMetadata) -> dict:
    return {"name": meta.name, "version": meta.version, "extensions": meta.extensions}


def model_config_json(meta: ModelMetadata) -> dict:
    """Triton's model configuration JSON (GET /v2/models/{m}/config), as perf_analyzer reads it."""
    def tensors(specs):
        return [{"name": s.name, "data_type": "TYPE_STRING" if s.datatype == "BYTES" else f"TYPE_{s.datatype}",
                 "dims": list(s.shape)} for s in specs]
    return {"name": meta.name, "platform": "openvino", "backend": "openvino", "max_batch_size": 0,
            "input": tensors(meta.inputs), "output": tensors(meta.outputs)}


def statistics_json(rows) -> dict:
    """Triton's statistics JSON (GET /v2/models/{m}/stats), as perf_analyzer reads it."""
    def duration(count: int, ns: int) -> dict:
        return {"count": count, "ns": ns}
    return {"model_stats": [
        {"name": name, "version": str(version), "last_inference": s.last_inference_ms,
         "inference_count": s.success_count, "execution_count": s.success_count,
         "inference_stats": {"success": duration(s.success_count, s.success_ns),
                             "fail": duration(s.fail_count, s.fail_ns),
                             "queue": duration(s.success_count, s.queue_ns),
                             "compute_input": duration(s.success_count, 0),
                             "compute_infer": duration(s.success_count, s.compute_infer_ns),
                             "compute_output": duration(s.success_count, 0)},
         "batch_stats": []} for name, version, s in rows]}
