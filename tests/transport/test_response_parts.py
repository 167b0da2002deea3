"""The native gRPC server writes a ModelInferResponse as pieces (header, then each raw output as its own field):
joined, they must be the very bytes protobuf serializes, and parse back to the same message."""
from __future__ import annotations

import numpy as np
import pytest

from ovms._proto.messages import kserve as pb
from ovms.protocol import kserve_grpc as codec
from ovms.types import InferResponse, Tensor


@pytest.mark.parametrize("sizes", [[16], [0], [200], [1 << 20, 3], []])
def test_parts_join_to_the_serialized_message(sizes):
    outputs = [Tensor(f"out{i}", "UINT8", (n,), raw=np.arange(n, dtype=np.uint8).tobytes())
               for i, n in enumerate(sizes)]
    response = InferResponse("m", 3, outputs, "req-7", parameters={"flag": True, "n": 5, "s": "x"})
    joined = b"".join(codec.encode_infer_response_parts(response))
    assert joined == codec.encode_infer_response(response).SerializeToString()
    parsed = pb.ModelInferResponse.FromString(joined)
    assert [o.name for o in parsed.outputs] == [o.name for o in outputs]
    assert list(parsed.raw_output_contents) == [o.as_raw() for o in outputs]
    assert parsed.id == "req-7" and parsed.model_version == "3" and parsed.parameters["n"].int64_param == 5
