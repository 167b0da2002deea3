"""The OpenAI / Cohere JSON of the generative endpoints <-> neutral types, one module per endpoint family.

Transports import this package as one codec (``from ovms.genai import protocol as codec``).
"""
from ovms.genai.protocol.audio import (SpeechCall, TranscriptionCall, decode_speech,  # noqa: F401
                                       decode_transcription, transcription_delta_json, transcription_done_json,
                                       transcription_json)
from ovms.genai.protocol.chat import (GenerateCall, Choice, ChunkEncoder, chunk_json, decode_generate,  # noqa: F401
                                      response_json, tool_call_delta_json, tool_calls_json, usage_chunk_json)
from ovms.genai.protocol.common import (SSE_DONE, Form, invalid, new_id, now, parse_body, sse,  # noqa: F401
                                        usage_json)
from ovms.genai.protocol.embeddings import (EmbeddingsCall, RerankCall, decode_embeddings,  # noqa: F401
                                            decode_rerank, embeddings_json, rerank_json)
from ovms.genai.protocol.images import decode_image_edit, decode_image_generation, images_json  # noqa: F401
from ovms.genai.protocol.models import model_json, models_json  # noqa: F401
from ovms.genai.protocol.tokenize import TokenizeCall, decode_tokenize, tokenize_json  # noqa: F401
from ovms.genai.protocol.responses import ResponseBuilder, ResponsesCall, decode_responses  # noqa: F401
