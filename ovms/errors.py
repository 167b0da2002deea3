"""One error hierarchy for every layer, and the tables that map it onto gRPC and HTTP.

Messages are OpenVINO Model Server's (src/status.cpp): users grep their logs and match client code against
them. A detail is appended as OVMS does: ``"<message> - <details>"``. This module imports neither grpc nor
aiohttp; transports read ``GRPC_CODE`` / ``HTTP_STATUS`` through ``ServingError.grpc_code`` / ``.http_status``.
"""
from __future__ import annotations

import enum


class Kind(enum.Enum):
    """A kind of failure: (OVMS message, gRPC status code name, HTTP status)."""

    MODEL_NAME_MISSING = ("Model with requested name is not found", "NOT_FOUND", 404)
    MODEL_VERSION_MISSING = ("Model with requested version is not found", "NOT_FOUND", 404)
    MODEL_VERSION_NOT_LOADED_ANYMORE = ("Model with requested version is retired", "NOT_FOUND", 404)
    MODEL_VERSION_NOT_LOADED_YET = ("Model with requested version is not loaded yet", "UNAVAILABLE", 503)
    MODEL_VERSION_INVALID = ("Model version is invalid", "INVALID_ARGUMENT", 400)
    INVALID_NO_OF_INPUTS = ("Invalid number of inputs", "INVALID_ARGUMENT", 400)
    INVALID_MISSING_INPUT = ("Missing input with specific name", "INVALID_ARGUMENT", 400)
    INVALID_MISSING_OUTPUT = ("Missing output with specific name", "INVALID_ARGUMENT", 400)
    INVALID_NO_OF_SHAPE_DIMENSIONS = ("Invalid number of shape dimensions", "INVALID_ARGUMENT", 400)
    INVALID_BATCH_SIZE = ("Invalid input batch size", "INVALID_ARGUMENT", 400)
    INVALID_SHAPE = ("Invalid input shape", "INVALID_ARGUMENT", 400)
    INVALID_PRECISION = ("Invalid input precision", "INVALID_ARGUMENT", 400)
    INVALID_VALUE_COUNT = ("Invalid number of values in tensor proto container", "INVALID_ARGUMENT", 400)
    INVALID_CONTENT_SIZE = ("Invalid content size of tensor proto", "INVALID_ARGUMENT", 400)
    INVALID_MESSAGE_STRUCTURE = ("Invalid message structure", "INVALID_ARGUMENT", 400)
    INVALID_INPUT_FORMAT = ("Invalid input format", "INVALID_ARGUMENT", 400)
    # Binary image inputs (src/status.cpp "Binary inputs"); a payload that is not an image is the client's error.
    IMAGE_PARSING_FAILED = ("Image parsing failed", "INVALID_ARGUMENT", 400)
    INVALID_NO_OF_CHANNELS = ("Invalid number of channels in binary input", "INVALID_ARGUMENT", 400)
    BINARY_IMAGES_RESOLUTION_MISMATCH = ("Binary input images for this endpoint are required to have the same "
                                         "resolution", "INVALID_ARGUMENT", 400)
    UNSUPPORTED_LAYOUT = ("Received binary image input but resource not configured to accept NHWC layout",
                          "INVALID_ARGUMENT", 400)
    BYTES_CONTENTS_EMPTY = ("Bytes contents is empty", "INVALID_ARGUMENT", 400)
    JSON_INVALID = ("The file is not valid json", "INVALID_ARGUMENT", 400)
    REST_BODY_IS_NOT_AN_OBJECT = ("Request body should be JSON object", "INVALID_ARGUMENT", 400)
    REST_PREDICT_UNKNOWN_ORDER = ("Invalid JSON structure. Could not detect row or column format",
                                  "INVALID_ARGUMENT", 400)
    REST_INSTANCES_BATCH_SIZE_DIFFER = ("Invalid JSON structure. Request inputs have different batch sizes",
                                        "INVALID_ARGUMENT", 400)
    REST_COULD_NOT_PARSE_INSTANCE = ("Could not parse instance content. Not valid ndarray detected",
                                     "INVALID_ARGUMENT", 400)
    REST_NO_INSTANCES_FOUND = ("Invalid JSON structure. Missing instances in row format", "INVALID_ARGUMENT", 400)
    REST_INSTANCES_NOT_NAMED_OR_NONAMED = ("Could not detect neither named or nonamed format", "INVALID_ARGUMENT",
                                           400)
    REST_INVALID_URL = ("Invalid request URL", "INVALID_ARGUMENT", 400)
    REST_UNSUPPORTED_METHOD = ("Unsupported method", "UNIMPLEMENTED", 406)
    CONFIG_RELOAD_FAILED = ("Reloading config file failed. Check server logs for more info.", "INVALID_ARGUMENT",
                            400)
    # DAG pipelines (src/status.cpp; gRPC codes from src/grpc_utils.cpp, HTTP from src/http_server.cpp).
    PIPELINE_NOT_LOADED_YET = ("Pipeline is not loaded yet", "UNAVAILABLE", 404)
    PIPELINE_NOT_LOADED_ANYMORE = ("Pipeline is retired", "NOT_FOUND", 404)
    PIPELINE_DEMULTIPLEXER_NO_RESULTS = ("Pipeline execution aborted due to no content from custom node", "ABORTED",
                                         204)
    PIPELINE_WRONG_NUMBER_OF_DIMENSIONS_TO_DEMULTIPLY = ("Wrong number of dimensions in a tensor to be sharded",
                                                         "INVALID_ARGUMENT", 400)
    PIPELINE_DEMULTIPLY_COUNT_MISMATCH = ("Demultiplication count does not match tensor first dimension",
                                          "INVALID_ARGUMENT", 400)
    PIPELINE_TOO_LARGE_DIMENSION_SIZE_TO_DEMULTIPLY = ("Too large dynamic demultiplication requested.",
                                                       "INVALID_ARGUMENT", 400)
    PIPELINE_INCONSISTENT_SHARD_DIMENSIONS = ("Gathered tensor shards dimensions are different", "INVALID_ARGUMENT",
                                              400)
    PIPELINE_STRING_DEMULTIPLICATION_UNSUPPORTED = ("Demultiplication is not supported for string precision",
                                                    "INVALID_ARGUMENT", 400)
    NODE_LIBRARY_EXECUTION_FAILED = ("Custom node failed during execution", "INTERNAL", 500)
    NODE_LIBRARY_MISSING_OUTPUT = ("Custom node output is missing", "INTERNAL", 500)
    NODE_LIBRARY_INVALID_SHAPE = ("Custom node has produced tensor with not matching shape", "INTERNAL", 500)
    NODE_LIBRARY_INVALID_PRECISION = ("Custom node has produced tensor with unspecified precision", "INTERNAL", 500)
    NOT_IMPLEMENTED = ("Not implemented", "UNIMPLEMENTED", 501)
    INVALID_UNEXPECTED_INPUT = ("Unexpected input", "INVALID_ARGUMENT", 400)
    # MediaPipe graphs (src/status.cpp; gRPC codes from src/grpc_utils.cpp, HTTP from src/http_server.cpp).
    MEDIAPIPE_EXECUTION_ERROR = ("Mediapipe execution failed. MP status", "INVALID_ARGUMENT", 400)
    MEDIAPIPE_PRECONDITION_FAILED = ("Mediapipe graph precondition failed", "FAILED_PRECONDITION", 412)
    MEDIAPIPE_INVALID_TIMESTAMP = ("Malformed packet timestamp", "INVALID_ARGUMENT", 400)
    # OpenAI-compatible endpoints (/v3): OVMS answers a body that is not JSON with 412 (JSON_INVALID ->
    # PRECOND_FAILED in src/http_rest_api_handler.cpp); validation failures name the field.
    OPENAI_JSON_INVALID = ("The file is not valid json", "INVALID_ARGUMENT", 412)
    GENAI_INVALID_REQUEST = ("Invalid request", "INVALID_ARGUMENT", 400)
    UNAUTHORIZED = ("Unauthorized: missing or wrong API key", "UNAUTHENTICATED", 401)
    SERVER_BUSY = ("Server busy: too many requests in the queue, retry later", "RESOURCE_EXHAUSTED", 503)
    SERVER_NOT_READY = ("Server is not ready", "UNAVAILABLE", 503)
    SERVER_SHUTTING_DOWN = ("Server is shutting down: it finishes the requests in flight and takes no new ones; "
                            "send this request to another replica", "UNAVAILABLE", 503)
    OV_INTERNAL_INFERENCE_ERROR = ("Internal inference error", "INTERNAL", 500)
    INTERNAL_ERROR = ("Internal server error", "INTERNAL", 500)

    @property
    def message(self) -> str:
        return self.value[0]


class ServingError(Exception):
    """A failure a client should see: a kind (fixing code and message) and optional details."""

    def __init__(self, kind: Kind, details: str = "") -> None:
        self.kind = kind
        self.details = details
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.kind.message} - {self.details}" if self.details else self.kind.message

    @property
    def grpc_code(self) -> str:
        """Name of the ``grpc.StatusCode`` member."""
        return self.kind.value[1]

    @property
    def http_status(self) -> int:
        return self.kind.value[2]


class ConfigError(Exception):
    """The model repository, config.json or a command line flag is wrong; the message says what to fix."""


class ModelLoadError(Exception):
    """A model version could not be loaded (missing files, invalid IR, device failure)."""
