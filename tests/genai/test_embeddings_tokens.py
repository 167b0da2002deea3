"""Embeddings of token-id input (OpenAI ``input`` as token arrays): the same vectors as the text they came from."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json

import numpy as np
import openai
import pytest
import requests

from ovms.backends.genai_embeddings import EmbeddingsServable
from ovms.errors import ServingError
from ovms.graph import GenAINodeOptions
from tests.genai.conftest import EMBEDDER_DIR, FIXTURES

TOKENIZER_DIRS = {"tiny-embedder": EMBEDDER_DIR, "minilm": FIXTURES / "minilm-tokenizer"}
TEXTS = ["The cat sits on the mat.", "hi", "A much longer sentence about dogs, cats and the mats they sit on."]
TINY_MAX_LENGTH = 128  # max_position_embeddings of tests/fixtures/genai/tiny-embedder/config.json (vocab_size 100)


def token_ids(model: str, text: str) -> list[int]:
    """The ids the pipeline feeds for text: the servable's tokenizer with its special tokens."""
    import openvino_genai

    tokenizer = openvino_genai.Tokenizer(str(TOKENIZER_DIRS[model]))
    return [int(t) for t in tokenizer.encode(text).input_ids.data[0]]


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def vectors(response) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])


@pytest.mark.parametrize("model", ["tiny-embedder", "minilm"])
def test_token_ids_embed_like_their_text(client, model):
    text = TEXTS[0]
    ids = token_ids(model, text)
    from_text = client.embeddings.create(model=model, input=text, encoding_format="float")
    from_ids = client.embeddings.create(model=model, input=ids, encoding_format="float")
    assert len(from_ids.data) == 1 and from_ids.data[0].index == 0
    assert cosines(vectors(from_ids), vectors(from_text)).min() >= 0.9999
    assert from_ids.usage.prompt_tokens == from_ids.usage.total_tokens == len(ids) == from_text.usage.prompt_tokens


@pytest.mark.parametrize("model", ["tiny-embedder", "minilm"])
def test_batch_of_token_arrays_of_different_lengths(client, model):
    ids = [token_ids(model, text) for text in TEXTS]
    assert len({len(i) for i in ids}) == len(ids)  # padding to the longest, masked, must not leak into any vector
    from_text = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    from_ids = client.embeddings.create(model=model, input=ids, encoding_format="float")
    assert [d.index for d in from_ids.data] == [0, 1, 2]
    assert cosines(vectors(from_ids), vectors(from_text)).min() >= 0.9999
    assert from_ids.usage.prompt_tokens == sum(map(len, ids))


def test_token_input_base64_equals_float(client):
    ids = [token_ids("tiny-embedder", text) for text in TEXTS[:2]]
    floats = client.embeddings.create(model="tiny-embedder", input=ids, encoding_format="float")
    # the openai client asks for base64 by default and decodes it itself
    decoded = client.embeddings.create(model="tiny-embedder", input=ids)
    assert np.allclose(vectors(floats), vectors(decoded), atol=1e-7)


def test_token_input_on_v1_path(base_url):
    ids = token_ids("tiny-embedder", TEXTS[0])
    v1 = base_url.removesuffix("/v3") + "/v1"
    body = requests.post(f"{v1}/embeddings", json={"model": "tiny-embedder", "input": [ids]}, timeout=30).json()
    assert body["usage"]["prompt_tokens"] == len(ids) and len(body["data"][0]["embedding"]) == 32


def test_concurrent_token_requests_give_the_same_vectors(client):
    ids = [token_ids("tiny-embedder", text) for text in TEXTS]
    want = vectors(client.embeddings.create(model="tiny-embedder", input=ids, encoding_format="float"))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda _: vectors(client.embeddings.create(
            model="tiny-embedder", input=ids, encoding_format="float")), range(12)))
    assert all(np.array_equal(g, want) for g in got)


@pytest.mark.parametrize("tokens, text", [
    ([[2, 50, 100, 3]], "input[0][2]: token id 100 is out of the model's vocabulary [0, 100)"),
    ([[2, 3], [2, -1, 3]], "input[1][1]: token id -1 is out of the model's vocabulary [0, 100)"),
    ([2, 10**20], "input[0][1]: token id 100000000000000000000 is out of the model's vocabulary [0, 100)"),
    ([[2] * (TINY_MAX_LENGTH + 1)], f"input[0]: Input length {TINY_MAX_LENGTH + 1} longer than allowed "
                                     f"{TINY_MAX_LENGTH}"),
])
def test_bad_token_input_is_a_400_that_names_it(base_url, client, tokens, text):
    response = requests.post(f"{base_url}/embeddings", json={"model": "tiny-embedder", "input": tokens}, timeout=30)
    assert response.status_code == 400, response.text
    assert text in response.json()["error"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.embeddings.create(model="tiny-embedder", input=tokens)
    assert text in raised.value.response.json()["error"]  # OVMS's body: {"error": "<message>"}


def test_too_long_text_is_a_400_too(base_url):
    """The text path follows the same limit (before, the pipeline failed inside the model: a 500)."""
    text = " ".join(["The cat sits on the mat."] * 30)
    assert len(token_ids("tiny-embedder", text)) > TINY_MAX_LENGTH
    response = requests.post(f"{base_url}/embeddings", json={"model": "tiny-embedder", "input": ["hi", text]},
                             timeout=30)
    assert response.status_code == 400, response.text
    assert "input[1]: Input length" in response.json()["error"]
    assert f"longer than allowed {TINY_MAX_LENGTH}" in response.json()["error"]


# ---- in process: every pooling, normalization on and off, truncate --------------------------------------------

def servable(**options) -> EmbeddingsServable:
    return EmbeddingsServable("tiny", GenAINodeOptions(task="embeddings", models_path=EMBEDDER_DIR, **options))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("pooling", ["CLS", "MEAN", "LAST_TOKEN"])
def test_every_pooling_matches_the_pipeline(pooling, normalize):
    embedder = servable(pooling=pooling, normalize_embeddings=normalize)
    from_text = asyncio.run(embedder.embed(TEXTS))
    ids = [token_ids("tiny-embedder", text) for text in TEXTS]
    from_ids = asyncio.run(embedder.embed(ids))
    assert np.allclose(from_ids.vectors, from_text.vectors, atol=1e-6)
    assert from_ids.prompt_tokens == from_text.prompt_tokens == sum(map(len, ids))


def test_truncate_cuts_token_arrays_and_texts_to_the_limit():
    embedder = servable(pooling="MEAN", truncate=True)
    long_ids = (token_ids("tiny-embedder", " ".join(["The cat sits on the mat."] * 30)))
    assert len(long_ids) > TINY_MAX_LENGTH
    cut = asyncio.run(embedder.embed([long_ids, long_ids[:TINY_MAX_LENGTH]]))
    assert np.allclose(cut.vectors[0], cut.vectors[1], atol=1e-6)
    assert cut.prompt_tokens == 2 * TINY_MAX_LENGTH  # the ids embedded
    text = asyncio.run(embedder.embed([" ".join(["The cat sits on the mat."] * 30)]))
    assert text.prompt_tokens == TINY_MAX_LENGTH and len(text.vectors[0]) == 32


def test_without_truncate_the_limit_is_refused_in_process():
    embedder = servable(pooling="MEAN")
    with pytest.raises(ServingError, match=f"Input length {TINY_MAX_LENGTH + 1} longer than allowed"):
        asyncio.run(embedder.embed([[2] * (TINY_MAX_LENGTH + 1)]))
    assert len(asyncio.run(embedder.embed([[2] * TINY_MAX_LENGTH])).vectors) == 1  # the limit itself is fine


def test_model_limits_come_from_config_json():
    from ovms.backends.token_embeddings import DEFAULT_MAX_LENGTH, model_limits

    config = json.loads((EMBEDDER_DIR / "config.json").read_text())
    assert model_limits(EMBEDDER_DIR) == (config["max_position_embeddings"], config["vocab_size"])
    assert model_limits(FIXTURES / "minilm-tokenizer") == (DEFAULT_MAX_LENGTH, None)  # no config.json: OVMS's 1024
