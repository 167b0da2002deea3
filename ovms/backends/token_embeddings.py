"""Embeddings of token ids: the embedding model's own IR run with OpenVINO, pooled as TextEmbeddingPipeline pools.

The OpenAI API (and OVMS's EmbeddingsCalculatorOV) accept ``input`` as token ids, but openvino_genai's
TextEmbeddingPipeline only takes text. So token input runs ``openvino_model.xml`` directly with the inputs the
pipeline feeds (openvino.genai src/cpp/src/rag/text_embedding_pipeline.cpp): ``input_ids`` as given (no special
tokens added, as vLLM does), ``attention_mask`` ones, ``token_type_ids`` zeros when the model has that input; then
the pipeline's post-processing on output 0 (src/cpp/src/rag/text_embedding_utils.cpp) in numpy.
"""
from __future__ import annotations

import json
import pathlib
import threading
from collections.abc import Sequence

import numpy as np

from ovms.backends.openvino_model import core
from ovms.errors import Kind, ServingError

# OVMS's EmbeddingsCalculatorOV reads the limit from config.json (max_position_embeddings, else
# max_trained_positions) and falls back to 1024 when neither is there.
DEFAULT_MAX_LENGTH = 1024
_FED_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_limits(path: pathlib.Path) -> tuple[int, int | None]:
    """(longest input in tokens, vocabulary size or None) from the model's config.json."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    max_length = config.get("max_position_embeddings") or config.get("max_trained_positions") or DEFAULT_MAX_LENGTH
    vocab_size = config.get("vocab_size")
    return int(max_length), (int(vocab_size) if isinstance(vocab_size, int) and vocab_size > 0 else None)


def too_long(index: int, length: int, max_length: int) -> ServingError:
    # OVMS's words ("Input length N longer than allowed M"), with which input and what to do about it
    return ServingError(Kind.GENAI_INVALID_REQUEST,
                        f"input[{index}]: Input length {length} longer than allowed {max_length} (the model's "
                        "max_position_embeddings); shorten it or set truncate: true in the graph")


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, *, normalize: bool) -> np.ndarray:
    """[batch, seq, hidden] -> [batch, hidden] as the pipeline's post-processing graph computes it.

    CLS: the first position. MEAN: sum over attended positions / max(count, 1e-12). LAST_TOKEN: the last attended
    position (right padding). normalize: NormalizeL2 with eps 1e-12 in MAX mode, x / sqrt(max(sum(x^2), eps)).
    """
    if pooling == "CLS":
        vectors = hidden[:, 0]
    elif pooling == "MEAN":
        weights = mask[:, :, None].astype(hidden.dtype)
        vectors = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), np.float32(1e-12))
    elif pooling == "LAST_TOKEN":
        vectors = hidden[np.arange(hidden.shape[0]), mask.sum(axis=1) - 1]
    else:
        raise ValueError(f"pooling {pooling!r} is not CLS, MEAN or LAST_TOKEN")
    if normalize:
        squares = (vectors * vectors).sum(axis=1, keepdims=True)
        vectors = vectors / np.sqrt(np.maximum(squares, np.float32(1e-12)))
    return vectors


class TokenEmbedder:
    """Embeds token arrays with the model IR, compiled on the first request (a second copy of the weights, so
    servables never asked for tokens don't pay for it) and kept; one infer request, used under a lock."""

    def __init__(self, model_path: pathlib.Path, *, device: str, plugin_config: dict, pooling: str,
                 normalize: bool, truncate: bool, max_length: int, vocab_size: int | None, pad_id: int) -> None:
        self.model_path, self.device, self.plugin_config = model_path, device, dict(plugin_config)
        self.pooling, self.normalize, self.truncate = pooling, normalize, truncate
        self.max_length, self.vocab_size = max_length, vocab_size
        # padded positions are masked out, so any id in the vocabulary serves when the tokenizer names no pad token
        self.pad_id = pad_id if pad_id >= 0 else 0
        self._lock = threading.Lock()
        self._request = None
        self._dtypes: dict[str, np.dtype] = {}

    def check(self, inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """The token arrays as int64 arrays, validated (ids in [0, vocab_size)) and cut to max_length when the graph
        says truncate (keeping the first ids: which of them are special tokens is unknown), else refused."""
        arrays = []
        for i, ids in enumerate(inputs):
            try:
                array = np.asarray(ids, dtype=np.int64)
            except OverflowError:
                bad = next(t for t in ids if not -2**63 <= t < 2**63)
                raise self._bad_id(i, list(ids).index(bad), bad) from None
            wrong = (array < 0) if self.vocab_size is None else (array < 0) | (array >= self.vocab_size)
            if wrong.any():
                j = int(np.flatnonzero(wrong)[0])
                raise self._bad_id(i, j, int(array[j]))
            if len(array) > self.max_length:
                if not self.truncate:
                    raise too_long(i, len(array), self.max_length)
                array = array[:self.max_length]
            arrays.append(array)
        return arrays

    def _bad_id(self, i: int, j: int, value: int) -> ServingError:
        bound = f"[0, {self.vocab_size})" if self.vocab_size is not None else "non-negative ids"
        return ServingError(Kind.GENAI_INVALID_REQUEST,
                            f"input[{i}][{j}]: token id {value} is out of the model's vocabulary {bound}")

    def embed(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Vectors [batch, hidden] for checked arrays, padded right to the longest with pad_id and mask 0."""
        width = max(len(a) for a in arrays)
        ids = np.full((len(arrays), width), self.pad_id, np.int64)
        mask = np.zeros((len(arrays), width), np.int64)
        for row, array in enumerate(arrays):
            ids[row, :len(array)] = array
            mask[row, :len(array)] = 1
        with self._lock:
            request = self._compiled()
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._dtypes:
                feed["token_type_ids"] = np.zeros_like(ids)
            outputs = request.infer({name: value.astype(self._dtypes[name], copy=False)
                                     for name, value in feed.items()})
            hidden = np.array(outputs[0], dtype=np.float32)  # a copy: the request reuses its output buffer
        return pool(hidden, mask, self.pooling, normalize=self.normalize)

    def _compiled(self):
        if self._request is None:
            model = core().read_model(str(self.model_path / "openvino_model.xml"))
            names = {name for port in model.inputs for name in port.get_names()}
            unknown = sorted(port.get_any_name() for port in model.inputs if not port.get_names() & set(_FED_INPUTS))
            if "input_ids" not in names or "attention_mask" not in names or unknown:
                raise ServingError(Kind.NOT_IMPLEMENTED,
                                   "token input needs a model whose inputs are input_ids, attention_mask and "
                                   f"optionally token_type_ids; this one has {', '.join(sorted(names))}")
            compiled = core().compile_model(model, self.device, self.plugin_config)
            self._dtypes = {name: port.get_element_type().to_dtype() for port in compiled.inputs
                            for name in port.get_names() if name in _FED_INPUTS}
            self._request = compiled.create_infer_request()
        return self._request
