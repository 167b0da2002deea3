"""TensorFlow Serving API (gRPC messages and REST JSON) <-> neutral types.

Numeric tensors go out as ``tensor_content`` and strings as ``string_val``, as OVMS answers; requests may use
``tensor_content`` (read without a copy) or any typed ``*_val`` field.
"""
from __future__ import annotations

import base64
from typing import Any

import numpy as np

from ovms._native import load
from ovms._native.codec_errors import CodecError
from ovms._proto.messages import tf_meta_graph as meta_graph_pb2
from ovms._proto.messages import tf_tensor as tensor_pb2
from ovms._proto.messages import tf_types as types_pb2
from ovms._proto.messages import tfs_get_model_metadata as get_model_metadata_pb2
from ovms._proto.messages import tfs_get_model_status as get_model_status_pb2
from ovms._proto.messages import tfs_predict as predict_pb2
from ovms.dataplane import VersionStatus
from ovms.errors import Kind, ServingError
from ovms.types import NUMPY_DTYPE, element_count, InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

_codec = load("tensorcodec")

DATATYPE_OF_DT = {
    types_pb2.DT_FLOAT: "FP32", types_pb2.DT_DOUBLE: "FP64", types_pb2.DT_INT32: "INT32",
    types_pb2.DT_UINT8: "UINT8", types_pb2.DT_INT16: "INT16", types_pb2.DT_INT8: "INT8",
    types_pb2.DT_STRING: "BYTES", types_pb2.DT_INT64: "INT64", types_pb2.DT_BOOL: "BOOL",
    types_pb2.DT_UINT16: "UINT16", types_pb2.DT_HALF: "FP16", types_pb2.DT_UINT32: "UINT32",
    types_pb2.DT_UINT64: "UINT64", types_pb2.DT_BFLOAT16: "BF16",
}
DT_OF_DATATYPE = {v: k for k, v in DATATYPE_OF_DT.items()}
VAL_FIELD = {"FP32": "float_val", "FP64": "double_val", "INT32": "int_val", "INT16": "int_val", "INT8": "int_val",
             "UINT8": "int_val", "UINT16": "int_val", "INT64": "int64_val", "BOOL": "bool_val",
             "UINT32": "uint32_val", "UINT64": "uint64_val", "BYTES": "string_val"}
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE = "serving_default"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


def dt_name(datatype: str) -> str:
    return types_pb2.DataType.Name(DT_OF_DATATYPE.get(datatype, types_pb2.DT_INVALID))


def model_version(spec) -> int | None:
    """The version a ModelSpec asks for: None (default) when absent or 0."""
    if spec.HasField("version_label"):
        raise ServingError(Kind.MODEL_VERSION_INVALID, "version_label is not supported; use version")
    return spec.version.value or None if spec.HasField("version") else None


def tensor_from_proto(name: str, proto: tensor_pb2.TensorProto) -> Tensor:
    """TensorProto -> Tensor; tensor_content stays as the message's bytes until a backend asks."""
    datatype = DATATYPE_OF_DT.get(proto.dtype)
    if datatype is None:
        known = types_pb2.DataType.DESCRIPTOR.values_by_number.get(proto.dtype)
        raise ServingError(Kind.INVALID_PRECISION, f"Unsupported data type {known.name if known else proto.dtype}; "
                                                   f"input name: {name}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.tensor_content:
        return Tensor(name, datatype, shape, raw=proto.tensor_content)
    try:
        if datatype == "FP16":
            halves = np.array(proto.half_val, dtype=np.int32)
            if halves.size != (count := element_count(shape)):
                raise CodecError(f"Expected: {count} values; Actual: {halves.size}")
            array = halves.astype("<u2").view("<f2").reshape(shape)
        else:
            array = _codec.contents_to_array(getattr(proto, VAL_FIELD[datatype]), datatype, shape)
    except (OverflowError, ValueError) as exc:  # CodecError is a ValueError
        raise ServingError(Kind.INVALID_VALUE_COUNT, f"{exc}; input name: {name}") from None
    return Tensor(name, datatype, shape, array=array)


def tensor_to_proto(tensor: Tensor, proto: tensor_pb2.TensorProto) -> None:
    proto.dtype = DT_OF_DATATYPE[tensor.datatype]
    for dim in tensor.shape:
        proto.tensor_shape.dim.add(size=dim)
    if tensor.datatype == "BYTES":
        proto.string_val.extend(_codec.array_to_contents(tensor.as_array(), "BYTES"))
    else:
        proto.tensor_content = tensor.as_raw()


def decode_predict(request: predict_pb2.PredictRequest) -> InferRequest:
    spec = request.model_spec
    inputs = [tensor_from_proto(name, proto) for name, proto in request.inputs.items()]
    return InferRequest(spec.name, model_version(spec), inputs, requested_outputs=list(request.output_filter) or None)


def encode_predict(response: InferResponse, signature_name: str) -> predict_pb2.PredictResponse:
    message = predict_pb2.PredictResponse()
    message.model_spec.name = response.model_name
    message.model_spec.version.value = response.model_version
    message.model_spec.signature_name = signature_name or SIGNATURE
    for tensor in response.outputs:
        tensor_to_proto(tensor, message.outputs[tensor.name])
    return message


def _tensor_info(spec: TensorSpec, info: meta_graph_pb2.TensorInfo) -> None:
    info.name = spec.name
    info.dtype = DT_OF_DATATYPE.get(spec.datatype, types_pb2.DT_INVALID)
    for dim in spec.shape:
        info.tensor_shape.dim.add(size=dim)


def encode_metadata(meta: ModelMetadata, version: int) -> get_model_metadata_pb2.GetModelMetadataResponse:
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for spec in meta.inputs:
        _tensor_info(spec, signature.inputs[spec.name])
    for spec in meta.outputs:
        _tensor_info(spec, signature.outputs[spec.name])
    signatures = get_model_metadata_pb2.SignatureDefMap()
    signatures.signature_def[SIGNATURE].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = meta.name
    response.model_spec.version.value = version
    any_value = response.metadata["signature_def"]
    any_value.type_url = SIGNATURE_DEF_MAP_URL
    any_value.value = signatures.SerializeToString()
    return response


def encode_status(statuses: list[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        item = response.model_version_status.add(version=status.version,
                                                 state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state))
        item.status.error_code = 0 if status.error_code == "OK" else 2
        item.status.error_message = status.error_message
    return response


# ---- REST ----------------------------------------------------------------------------------------------------

def status_json(statuses: list[VersionStatus]) -> dict:
    """GetModelStatusResponse as TFS REST / OVMS's /v1/config print it."""
    return {"model_version_status": [
        {"version": str(s.version), "state": s.state,
         "status": {"error_code": s.error_code, "error_message": s.error_message}} for s in statuses]}


def metadata_json(meta: ModelMetadata, version: int) -> dict:
    def infos(specs):
        return {s.name: {"dtype": dt_name(s.datatype),
                         "tensorShape": {"dim": [{"size": str(d), "name": ""} for d in s.shape],
                                         "unknownRank": False},
                         "name": s.name} for s in specs}
    return {"modelSpec": {"name": meta.name, "signatureName": "", "version": str(version)},
            "metadata": {"signature_def": {
                "@type": SIGNATURE_DEF_MAP_URL,
                "signatureDef": {SIGNATURE: {"inputs": infos(meta.inputs), "outputs": infos(meta.outputs),
                                             "methodName": PREDICT_METHOD}}}}}


def _json_value_to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    """A JSON value (number, list, nested lists, {"b64": ...}) as an array of the input's precision."""
    try:
        if spec.datatype == "BYTES":
            items = _strings(value)
            array = np.empty(len(items), dtype=object)
            array[:] = items
            return array
        array = np.array(value, dtype=NUMPY_DTYPE.get(spec.datatype, np.float32))
    except (ValueError, TypeError, OverflowError):
        raise ServingError(Kind.REST_COULD_NOT_PARSE_INSTANCE) from None
    return array


def _strings(value: Any) -> list[bytes]:
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise ValueError("binary values must be {\"b64\": \"...\"}")
        return [base64.b64decode(value["b64"], validate=True)]
    if isinstance(value, str):
        return [value.encode()]
    if isinstance(value, list):
        return [item for element in value for item in _strings(element)]
    raise ValueError(f"expected strings, got {type(value).__name__}")


def _batch_of(value: Any, spec: TensorSpec) -> tuple[np.ndarray, tuple[int, ...], str]:
    """The array, shape and datatype of one input's JSON value; {"b64": ...} values are BYTES whatever the input
    (to a 4-D numeric input they are encoded images, OVMS's binary input)."""
    if spec.datatype != "BYTES" and _first_is_b64(value):
        spec = TensorSpec(spec.name, "BYTES", spec.shape)
    array = _json_value_to_array(value, spec)
    if spec.datatype == "BYTES":
        return array, _string_shape(value), "BYTES"
    return array, array.shape, spec.datatype


def _first_is_b64(value: Any) -> bool:
    while isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, dict) and "b64" in value


def _string_shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, list):
        inner = {_string_shape(v) for v in value}
        if len(inner) > 1:
            raise ServingError(Kind.REST_COULD_NOT_PARSE_INSTANCE)
        return (len(value), *(inner.pop() if inner else ()))
    return ()


def decode_rest_predict(document: Any, model: str, version: int | None,
                        specs: list[TensorSpec]) -> tuple[InferRequest, str]:
    """A TFS REST predict body (row "instances" or column "inputs") -> InferRequest and its format."""
    if not isinstance(document, dict):
        raise ServingError(Kind.REST_BODY_IS_NOT_AN_OBJECT)
    by_name = {s.name: s for s in specs}
    if "instances" in document and "inputs" not in document:
        instances = document["instances"]
        if not isinstance(instances, list) or not instances:
            raise ServingError(Kind.REST_NO_INSTANCES_FOUND)
        if all(isinstance(i, dict) and "b64" not in i for i in instances):
            names = list(instances[0])
            if any(set(i) != set(names) for i in instances):
                raise ServingError(Kind.REST_INSTANCES_BATCH_SIZE_DIFFER)
            columns = {n: [i[n] for i in instances] for n in names}
        elif any(isinstance(i, dict) and "b64" not in i for i in instances):
            raise ServingError(Kind.REST_INSTANCES_NOT_NAMED_OR_NONAMED)
        else:
            if len(specs) != 1:
                raise ServingError(Kind.INVALID_NO_OF_INPUTS, f"Expected: {len(specs)}; Actual: 1")
            columns = {specs[0].name: instances}
        form = "row"
    elif "inputs" in document and "instances" not in document:
        inputs = document["inputs"]
        if isinstance(inputs, dict) and not (set(inputs) == {"b64"}):
            columns = inputs
        else:
            if len(specs) != 1:
                raise ServingError(Kind.INVALID_NO_OF_INPUTS, f"Expected: {len(specs)}; Actual: 1")
            columns = {specs[0].name: inputs}
        form = "column"
    else:
        raise ServingError(Kind.REST_PREDICT_UNKNOWN_ORDER)
    tensors = []
    batch_sizes = set()
    for name, value in columns.items():
        spec = by_name.get(name)
        if spec is None:  # let validation report it with OVMS's message, with a guessed type
            spec = TensorSpec(name, "FP32", ())
        array, shape, datatype = _batch_of(value, spec)
        if shape:
            batch_sizes.add(shape[0])
        tensors.append(Tensor(name, datatype, shape, array=array.reshape(shape)))
    if form == "row" and len(batch_sizes) > 1:
        raise ServingError(Kind.REST_INSTANCES_BATCH_SIZE_DIFFER)
    return InferRequest(model, version, tensors), form


def _json_of(tensor: Tensor) -> Any:
    array = tensor.as_array()
    if tensor.datatype == "BYTES":
        # TFS REST: outputs named *_bytes are base64 objects; so is anything that is not UTF-8 text.
        force = tensor.name.endswith("_bytes")
        flat = [{"b64": base64.b64encode(v).decode()} if force or _is_binary(v) else v.decode()
                for v in array.reshape(-1).tolist()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def _is_binary(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return True
    return False


def encode_rest_predict(response: InferResponse, form: str) -> dict:
    """Row requests get "predictions", column requests "outputs" (one output unnamed, several by name)."""
    outputs = response.outputs
    if form == "column":
        if len(outputs) == 1:
            return {"outputs": _json_of(outputs[0])}
        return {"outputs": {t.name: _json_of(t) for t in outputs}}
    if len(outputs) == 1:
        return {"predictions": _json_of(outputs[0])}
    columns = {t.name: _json_of(t) for t in outputs}
    batch = min((len(v) for v in columns.values() if isinstance(v, list)), default=0)
    return {"predictions": [{name: values[i] for name, values in columns.items()} for i in range(batch)]}
