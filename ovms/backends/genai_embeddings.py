"""Embeddings on openvino_genai's TextEmbeddingPipeline and rerank on TextRerankPipeline.

Both pipelines block; calls run in a worker thread (``asyncio.to_thread``) so the event loop never waits.
Pooling and normalization come from the graph (OVMS's EmbeddingsCalculatorOVOptions); all-MiniLM-L6-v2 needs
MEAN pooling (CLS gives cosine 0.657 against the sentence-transformers vector, ../shared/FIXTURES.md). Token-id
input, which the pipeline cannot take, runs the same IR through ``token_embeddings.TokenEmbedder``.

Input length: the pipeline itself neither truncates nor checks: a text past max_position_embeddings fails inside
the model (the tiny fixture's IR) or silently gets a wrong vector (the MiniLM fixture's IR gathers position
embeddings past the table, which OpenVINO answers with zeros). Both paths follow the graph's ``truncate``
as OVMS does: false (the default) refuses an input longer than the model's limit with a 400 naming it; true cuts it
to the limit (text: the tokenizer truncates and keeps the special tokens; token ids: the first ones are kept).
"""
from __future__ import annotations

import asyncio
import pathlib
import threading

import numpy as np
import openvino_genai as ov_genai

from ovms.backends.token_embeddings import TokenEmbedder, model_limits, too_long
from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.genai.types import EmbeddingResult, RerankResult
from ovms.graph import GenAINodeOptions
from ovms.servable import EmbeddingServable, RerankServable


def _check_dir(path: pathlib.Path) -> None:
    for name in ("openvino_model.xml", "openvino_tokenizer.xml"):
        if not (path / name).is_file():
            raise ModelLoadError(f"{path}: {name} missing; models_path must point at a model exported with "
                                 "optimum-cli export openvino and its converted tokenizer")


class _Counting:
    """Token counting for usage, with the pipeline's own tokenizer."""

    def __init__(self, path: pathlib.Path) -> None:
        self.tokenizer = ov_genai.Tokenizer(str(path))

    def count(self, texts: list[str]) -> int:
        return int(self.lengths(texts).sum())

    def lengths(self, texts: list[str], *, max_length: int | None = None) -> np.ndarray:
        """Tokens of each text, cut at max_length when given (as the pipeline's tokenization with max_length)."""
        if not texts:
            return np.zeros(0, np.int64)
        options = {} if max_length is None else {"max_length": max_length, "truncation": True}
        return self.tokenizer.encode(texts, **options).attention_mask.data.sum(axis=1)


class EmbeddingsServable(EmbeddingServable):
    platform = "OpenVINO GenAI"

    def __init__(self, name: str, options: GenAINodeOptions) -> None:
        self.name, self.version, self.options = name, 1, options
        path = options.models_path
        _check_dir(path)
        config = ov_genai.TextEmbeddingPipeline.Config()
        pooling = options.pooling.upper()
        if pooling not in ov_genai.TextEmbeddingPipeline.PoolingType.__members__:
            raise ModelLoadError(f"pooling {options.pooling!r} is not one of "
                                 f"{', '.join(ov_genai.TextEmbeddingPipeline.PoolingType.__members__)}")
        config.pooling_type = ov_genai.TextEmbeddingPipeline.PoolingType.__members__[pooling]
        config.normalize = bool(options.normalize_embeddings)
        self._max_length, vocab_size = model_limits(path)
        self._truncate = bool(options.truncate)
        if self._truncate:
            config.max_length = self._max_length  # the pipeline then tokenizes with truncation at max_length
        try:
            self._pipe = ov_genai.TextEmbeddingPipeline(str(path), options.device, config, **options.plugin_config)
            self._tokens = _Counting(path)
            pad_id = int(self._tokens.tokenizer.get_pad_token_id())
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: openvino_genai could not load the embeddings model: {exc}") from None
        self._lock = threading.Lock()  # one embed at a time per pipeline (it owns one infer request)
        self._token_embedder = TokenEmbedder(path, device=options.device, plugin_config=options.plugin_config,
                                             pooling=pooling, normalize=config.normalize, truncate=self._truncate,
                                             max_length=self._max_length, vocab_size=vocab_size, pad_id=pad_id)

    def _embed(self, texts: list[str]) -> EmbeddingResult:
        with self._lock:
            lengths = self._tokens.lengths(texts, max_length=self._max_length if self._truncate else None)
            for i, length in enumerate(lengths):
                if length > self._max_length:
                    raise too_long(i, int(length), self._max_length)
            vectors = self._pipe.embed_documents(texts)
        return EmbeddingResult([list(map(float, v)) for v in vectors], int(lengths.sum()))

    def _embed_tokens(self, inputs: list[list[int]]) -> EmbeddingResult:
        arrays = self._token_embedder.check(inputs)
        vectors = self._token_embedder.embed(arrays)
        # usage counts the ids embedded: all of them, unless truncate cut some (the text path counts likewise)
        return EmbeddingResult(vectors.astype(float).tolist(), sum(len(a) for a in arrays))

    async def embed(self, texts):
        if texts and not isinstance(texts[0], str):
            return await asyncio.to_thread(self._embed_tokens, list(texts))
        return await asyncio.to_thread(self._embed, list(texts))


class RerankPipelineServable(RerankServable):
    platform = "OpenVINO GenAI"

    def __init__(self, name: str, options: GenAINodeOptions) -> None:
        self.name, self.version, self.options = name, 1, options
        path = options.models_path
        _check_dir(path)
        try:
            config = ov_genai.TextRerankPipeline.Config()
            config.top_n = int(options.max_allowed_chunks)  # the pipeline's default keeps only 3 documents
            self._pipe = ov_genai.TextRerankPipeline(str(path), options.device, config, **options.plugin_config)
            self._tokens = _Counting(path)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: openvino_genai could not load the rerank model: {exc}") from None
        self._lock = threading.Lock()

    def _rerank(self, query: str, documents: list[str]) -> RerankResult:
        if len(documents) > int(self.options.max_allowed_chunks):
            raise ServingError(Kind.GENAI_INVALID_REQUEST, f"documents: {len(documents)} exceed max_allowed_chunks "
                                                           f"{self.options.max_allowed_chunks}")
        with self._lock:
            scores = self._pipe.rerank(query, documents)
            tokens = self._tokens.count([query] * len(documents) + documents)
        return RerankResult([(int(i), float(s)) for i, s in scores], tokens)

    async def rerank(self, query, documents):
        return await asyncio.to_thread(self._rerank, query, list(documents))
