"""Embeddings on openvino_genai's TextEmbeddingPipeline and rerank on TextRerankPipeline.

Both pipelines block; calls run in a worker thread (``asyncio.to_thread``) so the event loop never waits.
Pooling and normalization come from the graph (OVMS's EmbeddingsCalculatorOVOptions); all-MiniLM-L6-v2 needs
MEAN pooling (CLS gives cosine 0.657 against the sentence-transformers vector, ../shared/FIXTURES.md).
"""
from __future__ import annotations

import asyncio
import pathlib
import threading

import openvino_genai as ov_genai

from ovms.errors import Kind, ModelLoadError, ServingError
from ovms.genai_types import EmbeddingResult, RerankResult
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
        if not texts:
            return 0
        mask = self.tokenizer.encode(texts).attention_mask.data
        return int(mask.sum())


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
        try:
            self._pipe = ov_genai.TextEmbeddingPipeline(str(path), options.device, config, **options.plugin_config)
            self._tokens = _Counting(path)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path}: openvino_genai could not load the embeddings model: {exc}") from None
        self._lock = threading.Lock()  # one embed at a time per pipeline (it owns one infer request)

    def _embed(self, texts: list[str]) -> EmbeddingResult:
        with self._lock:
            vectors = self._pipe.embed_documents(texts)
            tokens = self._tokens.count(texts)
        return EmbeddingResult([list(map(float, v)) for v in vectors], tokens)

    async def embed(self, texts):
        if texts and not isinstance(texts[0], str):
            raise ServingError(Kind.GENAI_INVALID_REQUEST, "input: token arrays are not supported by this "
                                                           "embeddings pipeline; send strings")
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
