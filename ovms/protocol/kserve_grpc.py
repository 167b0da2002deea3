"""KServe v2 gRPC messages <-> neutral types."""
from __future__ import annotations

from ovms._native import load
from ovms._proto.messages import kserve as pb
from ovms.dataplane import ServerMetadata, parse_version
from ovms.errors import Kind, ServingError
from ovms.types import InferRequest, InferResponse, ModelMetadata, Tensor, TensorSpec

_codec = load("tensorcodec")

# Typed contents field per datatype (spec: "Tensor Data"); FP16 and BF16 travel only as raw bytes.
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
TRITON_TYPE = {"BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7, "INT32": 8,
               "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14}


def _parameter_value(param: pb.InferParameter):
    which = param.WhichOneof("parameter_choice")
    return getattr(param, which) if which else None


_RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents (repeated bytes)


def _read_varint(data, offset: int) -> tuple[int, int]:
    """(value, offset after it); IndexError past the end, ValueError for a varint over 10 bytes."""
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, offset
        shift += 7
        if shift >= 70:
            raise ValueError("varint too long")


def split_raw_inputs(data) -> tuple[bytes, list] | None:
    """A serialized ModelInferRequest cut in two: the message without its raw_input_contents (to parse, small),
    and those contents as views of ``data`` in order, so a big tensor is neither copied into a protobuf bytes
    object nor again into a writable buffer for OpenVINO. Only the top level is walked (its fields are a handful).
    None where the bytes are not a well-formed message at that level: the full parse then gives its error."""
    view = memoryview(data)
    end = len(view)
    offset = 0
    kept, raw = [], []
    try:
        while offset < end:
            start = offset
            tag, offset = _read_varint(view, offset)
            wire = tag & 7
            if wire == 2:
                size, offset = _read_varint(view, offset)
                if offset + size > end:
                    return None
                if tag >> 3 == _RAW_INPUT_FIELD:
                    raw.append(view[offset:offset + size])
                    offset += size
                    continue
                offset += size
            elif wire == 0:
                _, offset = _read_varint(view, offset)
            elif wire == 1:
                offset += 8
            elif wire == 5:
                offset += 4
            else:  # groups (3, 4) and the unused 6, 7: not in this message; the parser says what is wrong
                return None
            if offset > end or tag >> 3 == 0:
                return None
            kept.append(view[start:offset])
    except (IndexError, ValueError):
        return None
    return b"".join(kept), raw


def decode_infer_request(message: pb.ModelInferRequest, raw_inputs: list | None = None) -> InferRequest:
    """ModelInferRequest -> InferRequest; raw contents stay as the message's bytes (no copy), or are
    ``raw_inputs`` when the caller split them off before parsing (``split_raw_inputs``)."""
    raw = message.raw_input_contents if raw_inputs is None else raw_inputs
    inputs = []
    if raw:
        if len(raw) != len(message.inputs):
            raise ServingError(Kind.INVALID_MESSAGE_STRUCTURE,
                               f"raw_input_contents has {len(raw)} buffers for {len(message.inputs)} inputs; "
                               "send one buffer per input, in input order")
        for index, item in enumerate(message.inputs):
            if item.HasField("contents"):
                raise ServingError(Kind.INVALID_MESSAGE_STRUCTURE,
                                   "Passing buffers both in InferInputTensor contents and in raw_input_contents is "
                                   f"not allowed. Detected buffer in InferInputTensor contents for input: "
                                   f"{item.name}")
            inputs.append(Tensor(item.name, item.datatype, item.shape, raw=raw[index]))
    else:
        for item in message.inputs:
            field = CONTENTS_FIELD.get(item.datatype)
            if field is None:
                if item.datatype in ("FP16", "BF16"):
                    raise ServingError(Kind.INVALID_MESSAGE_STRUCTURE,
                                       f"input {item.name}: {item.datatype} has no typed contents field; send it in "
                                       "raw_input_contents")
                raise ServingError(Kind.INVALID_PRECISION, f"Unknown datatype: {item.datatype!r}; input name: "
                                                           f"{item.name}")
            shape = tuple(item.shape)
            try:
                array = _codec.contents_to_array(getattr(item.contents, field), item.datatype, shape)
            except (OverflowError, ValueError) as exc:  # CodecError is a ValueError
                raise ServingError(Kind.INVALID_VALUE_COUNT, f"{exc}; input name: {item.name}") from None
            inputs.append(Tensor(item.name, item.datatype, shape, array=array))
    requested = [out.name for out in message.outputs] or None
    parameters = {k: _parameter_value(v) for k, v in message.parameters.items()} or None
    return InferRequest(message.model_name, parse_version(message.model_version), inputs, message.id,
                        requested, parameters)


def _response_header(response: InferResponse) -> pb.ModelInferResponse:
    """The ModelInferResponse without its raw output contents."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=str(response.model_version),
                                    id=response.id)
    if response.parameters:
        for key, value in response.parameters.items():
            param = message.parameters[key]
            if isinstance(value, bool):
                param.bool_param = value
            elif isinstance(value, int):
                param.int64_param = value
            else:
                param.string_param = str(value)
    outputs = message.outputs
    for tensor in response.outputs:
        outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    return message


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    """InferResponse -> ModelInferResponse with raw_output_contents (as Triton and OVMS answer)."""
    message = _response_header(response)
    message.raw_output_contents.extend(tensor.as_raw() for tensor in response.outputs)
    return message


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_RAW_OUTPUT_TAG = b"\x32"  # raw_output_contents: field 6, length-delimited


def encode_infer_response_parts(response: InferResponse) -> list:
    """The serialized ModelInferResponse as pieces to write one after another: the message without its raw
    outputs, then each raw output as a field of its own. Protobuf reads the concatenation as one message (the
    same bytes ``encode_infer_response`` serializes to), and the output bytes are not copied into a message and
    out again."""
    parts = [_response_header(response).SerializeToString()]
    for tensor in response.outputs:
        raw = tensor.as_raw()
        parts.append(_RAW_OUTPUT_TAG + _varint(len(raw)))
        parts.append(raw)
    return parts


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def encode_model_metadata(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform,
                                    inputs=[_tensor_metadata(s) for s in meta.inputs],
                                    outputs=[_tensor_metadata(s) for s in meta.outputs])


def encode_server_metadata(meta: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)


def encode_model_config(meta: ModelMetadata) -> pb.ModelConfigResponse:
    """Triton's ModelConfig for tools that ask before inferring (perf_analyzer); no implicit batching."""
    config = pb.ModelConfig(name=meta.name, platform="openvino", backend="openvino", max_batch_size=0)
    for spec in meta.inputs:
        config.input.add(name=spec.name, data_type=TRITON_TYPE.get(spec.datatype, 0), dims=spec.shape)
    for spec in meta.outputs:
        config.output.add(name=spec.name, data_type=TRITON_TYPE.get(spec.datatype, 0), dims=spec.shape)
    return pb.ModelConfigResponse(config=config)


def encode_statistics(rows) -> pb.ModelStatisticsResponse:
    """Triton's ModelStatisticsResponse from (name, version, InferenceStats) rows."""
    response = pb.ModelStatisticsResponse()
    for name, version, stats in rows:
        item = response.model_stats.add(name=name, version=str(version), last_inference=stats.last_inference_ms,
                                         inference_count=stats.success_count, execution_count=stats.success_count)
        item.inference_stats.success.count = stats.success_count
        item.inference_stats.success.ns = stats.success_ns
        item.inference_stats.fail.count = stats.fail_count
        item.inference_stats.fail.ns = stats.fail_ns
        item.inference_stats.queue.count = stats.success_count
        item.inference_stats.queue.ns = stats.queue_ns
        item.inference_stats.compute_infer.count = stats.success_count
        item.inference_stats.compute_infer.ns = stats.compute_infer_ns
        for field in ("compute_input", "compute_output"):
            getattr(item.inference_stats, field).count = stats.success_count
    return response
