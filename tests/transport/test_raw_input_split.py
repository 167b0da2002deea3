"""``split_raw_inputs``: a serialized ModelInferRequest cut into the message without its raw_input_contents and
views of those contents. Whatever the bytes, the split either declines (None) or agrees with protobuf's own parse."""
from __future__ import annotations

import random

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from ovms._proto.messages import kserve as pb
from ovms.protocol import kserve_grpc as codec


def request_with(raw: list[bytes], **fields) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="image", model_version="2", id="call 7", **fields)
    for index, data in enumerate(raw):
        message.inputs.add(name=f"INPUT{index}", datatype="FP32", shape=[len(data) // 4])
    message.outputs.add(name="OUTPUT0")
    message.parameters["priority"].int64_param = 3
    message.parameters["note"].string_param = "x" * 300  # a length over one varint byte
    message.raw_input_contents.extend(raw)
    return message


def check(data: bytes | bytearray) -> None:
    """The split of ``data`` (if any) is protobuf's parse of it, field for field; where protobuf refuses the
    message (a nested field broken, a name not UTF-8), it refuses the rest of the split too: the same error."""
    split = codec.split_raw_inputs(memoryview(data))
    try:
        whole = pb.ModelInferRequest.FromString(bytes(data))
    except DecodeError:
        whole = None
    if split is None:
        return
    rest, raw = split
    if whole is None:
        with pytest.raises(DecodeError):
            pb.ModelInferRequest.FromString(rest)
        return
    assert list(whole.raw_input_contents) == [bytes(v) for v in raw]
    whole.ClearField("raw_input_contents")
    assert pb.ModelInferRequest.FromString(rest) == whole


def test_inputs_come_back_as_writable_views_in_order_and_the_rest_parses_the_same():
    rng = np.random.default_rng(0)
    tensors = [rng.random(n, dtype=np.float32).tobytes() for n in (150528, 16, 0, 40000)]
    message = request_with(tensors)
    buffer = bytearray(message.SerializeToString())
    rest, raw = codec.split_raw_inputs(memoryview(buffer))
    assert [bytes(v) for v in raw] == tensors
    assert all(isinstance(v, memoryview) and not v.readonly for v in raw)
    raw[0][0] = 0xAB  # a view of the received bytes, not a copy
    assert bytes(raw[0][:1]) == b"\xab"
    parsed = pb.ModelInferRequest.FromString(rest)
    assert len(rest) < 600 and not parsed.raw_input_contents
    message.ClearField("raw_input_contents")
    assert parsed == message
    request = codec.decode_infer_request(parsed, raw)
    array = request.inputs[3].as_array()
    assert array.flags.writeable and np.array_equal(array, np.frombuffer(tensors[3], np.float32))


def test_a_message_without_raw_contents_splits_into_itself():
    message = pb.ModelInferRequest(model_name="simple")
    message.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 2]).contents.int_contents.extend([1, 2])
    rest, raw = codec.split_raw_inputs(memoryview(message.SerializeToString()))
    assert raw == [] and pb.ModelInferRequest.FromString(rest) == message


@pytest.mark.parametrize("data", [b"\x3a\xff\xff\xff\xff\x0f", b"\x3a\x05abc", b"\x0b", b"\x07", b"\x00\x00",
                                  b"\x80" * 11, b"\x0a\x80", b"\x39\x00\x00"])
def test_malformed_tops_are_left_to_the_parser(data):
    assert codec.split_raw_inputs(memoryview(data)) is None
    check(data)


def test_every_cut_and_thousands_of_byte_flips_agree_with_protobuf():
    message = request_with([bytes(range(256)) * 3, b"\x00\x01\x02\x03"])
    data = message.SerializeToString()
    for cut in range(len(data) + 1):
        check(data[:cut])
    generator = random.Random(20261202)
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(generator.randint(1, 4)):
            mutated[generator.randrange(len(mutated))] = generator.randrange(256)
        check(mutated)
