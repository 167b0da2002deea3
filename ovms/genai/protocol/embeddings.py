"""OpenAI embeddings and Cohere rerank JSON <-> neutral types."""
from __future__ import annotations

import base64
import dataclasses
import struct

from typing import Any

from ovms.genai.protocol.common import boolean, invalid, log_unknown, model_field, new_id, uint


@dataclasses.dataclass(slots=True)
class EmbeddingsCall:
    model: str
    inputs: list[str] | list[list[int]]
    encoding_format: str


def decode_embeddings(doc: dict) -> EmbeddingsCall:
    log_unknown(doc, {"model", "input", "encoding_format", "user", "dimensions"}, "embeddings")
    model = model_field(doc)
    value = doc.get("input")
    if value is None:
        raise invalid("input field is required")
    if isinstance(value, str):
        inputs: list = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs = value
    elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        inputs = [value]
    elif (isinstance(value, list) and value and all(isinstance(v, list) and v and all(
            isinstance(t, int) and not isinstance(t, bool) for t in v) for v in value)):
        inputs = value
    else:
        raise invalid("input must be a string, an array of strings, an array of tokens or an array of token arrays")
    encoding = doc.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid("encoding_format accepts values float or base64")
    return EmbeddingsCall(model, inputs, encoding)


def embeddings_json(call: EmbeddingsCall, vectors: list[list[float]], prompt_tokens: int) -> dict:
    data = []
    for i, vector in enumerate(vectors):
        if call.encoding_format == "base64":
            embedding: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            embedding = vector
        data.append({"object": "embedding", "embedding": embedding, "index": i})
    return {"object": "list", "data": data, "model": call.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


@dataclasses.dataclass(slots=True)
class RerankCall:
    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


def decode_rerank(doc: dict) -> RerankCall:
    log_unknown(doc, {"model", "query", "documents", "top_n", "return_documents", "rank_fields",
                       "max_chunks_per_doc"}, "rerank")
    model = model_field(doc)
    query = doc.get("query")
    if not isinstance(query, str):
        raise invalid("query is missing or not a string")
    documents = doc.get("documents")
    if not isinstance(documents, list) or not documents:
        raise invalid("documents is missing or not a non-empty array")
    texts = []
    for d in documents:
        if isinstance(d, dict) and isinstance(d.get("text"), str):
            d = d["text"]
        if not isinstance(d, str):
            raise invalid("documents must be strings (or objects with a text string)")
        texts.append(d)
    top_n = uint(doc, "top_n", positive=True)
    return RerankCall(model, query, texts, top_n, boolean(doc, "return_documents", True))


def rerank_json(call: RerankCall, scores: list[tuple[int, float]], prompt_tokens: int) -> dict:
    ranked = sorted(scores, key=lambda item: -item[1])
    if call.top_n is not None:
        ranked = ranked[:call.top_n]
    results = []
    for index, score in ranked:
        item: dict[str, Any] = {"index": index, "relevance_score": score}
        if call.return_documents:
            item["document"] = {"text": call.documents[index]}
        results.append(item)
    return {"id": new_id("rerank"), "results": results, "usage": {"prompt_tokens": prompt_tokens,
                                                                  "total_tokens": prompt_tokens}}
