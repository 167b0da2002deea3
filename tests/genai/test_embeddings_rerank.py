"""Embeddings (openai client, float and base64) and Cohere-style rerank against the tiny fixtures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests.genai.conftest import EMBEDDER_DIR, F32_PLUGIN_CONFIG, FIXTURES, RERANKER_DIR


# fp32 against fp32: OpenVINO f32 and torch differ by float rounding (measured: 1e-7 on these outputs); 1e-5 leaves
# room for kernel differences and is still far below what a wrong pooling (0.33) or bf16 (3e-5) gives.
FP32_ATOL = 1e-5


@pytest.mark.parametrize("model,pooling", [("tiny-embedder", "mean"), ("tiny-embedder-cls", "cls")])
def test_embeddings_match_the_torch_reference(client, model, pooling):
    """Served vectors, element by element, against torch's (build_fixtures.py: BertModel, pooled, L2-normalized)."""
    reference = json.loads((EMBEDDER_DIR / "reference.json").read_text())
    response = client.embeddings.create(model=model, input=reference["sentences"], encoding_format="float")
    got = np.array([d.embedding for d in response.data])
    want = np.array(reference[f"{pooling}_normalized"])
    other = np.array(reference["cls_normalized" if pooling == "mean" else "mean_normalized"])
    assert np.abs(want - other).max() > 100 * FP32_ATOL  # the pooling is visible at this tolerance
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=FP32_ATOL)
    assert [d.index for d in response.data] == list(range(len(reference["sentences"])))
    assert response.usage.prompt_tokens == sum(reference["token_counts"])


def test_minilm_embeddings_match_sentence_transformers(client):
    """Real all-MiniLM-L6-v2 weights, served with the graph's MEAN pooling, against sentence-transformers."""
    reference = json.loads((FIXTURES / "minilm-reference.json").read_text())
    response = client.embeddings.create(model="minilm", input=reference["sentences"], encoding_format="float")
    got = np.array([d.embedding for d in response.data])
    cosine = (got * np.array(reference["embeddings"])).sum(axis=1)
    assert got.shape == (len(reference["sentences"]), 384)
    assert cosine.min() > 0.9999, cosine


def test_embeddings_base64_equals_float(client):
    floats = client.embeddings.create(model="tiny-embedder", input="The cat sits on the mat.",
                                      encoding_format="float").data[0].embedding
    # the openai client asks for base64 by default and decodes it itself
    decoded = client.embeddings.create(model="tiny-embedder", input="The cat sits on the mat.").data[0].embedding
    assert np.allclose(floats, decoded, atol=1e-7)


def test_rerank_orders_by_score_with_top_n_and_documents(base_url):
    reference = json.loads((RERANKER_DIR / "reference.json").read_text())
    query, documents = reference["cases"][0]
    body = requests.post(f"{base_url}/rerank", json={"model": "tiny-reranker", "query": query,
                                                     "documents": documents, "top_n": 2}, timeout=30).json()
    results = body["results"]
    assert len(results) == 2
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert all(0.0 < r["relevance_score"] < 1.0 for r in results)  # sigmoid of the logit
    assert results[0]["document"]["text"] == documents[results[0]["index"]]
    no_docs = requests.post(f"{base_url}/rerank", json={"model": "tiny-reranker", "query": query,
                                                        "documents": documents, "return_documents": False},
                            timeout=30).json()
    assert len(no_docs["results"]) == len(documents) and "document" not in no_docs["results"][0]
    many = requests.post(f"{base_url}/rerank", json={"model": "tiny-reranker", "query": query,
                                                     "documents": documents * 3}, timeout=30).json()
    assert sorted(r["index"] for r in many["results"]) == list(range(3 * len(documents)))  # not genai's top 3


@pytest.mark.parametrize("case", [0, 1])
def test_rerank_scores_match_the_torch_reference(base_url, case):
    """Served scores against torch's sigmoid(logit) (build_fixtures.py: BertForSequenceClassification on the
    query-document pairs), and the same ranking."""
    reference = json.loads((RERANKER_DIR / "reference.json").read_text())
    (query, documents), want = reference["cases"][case], reference["scores"][case]
    body = requests.post(f"{base_url}/rerank", json={"model": "tiny-reranker", "query": query,
                                                     "documents": documents}, timeout=30).json()
    got = {r["index"]: r["relevance_score"] for r in body["results"]}
    assert sorted(got) == list(range(len(documents)))
    np.testing.assert_allclose([got[i] for i in range(len(documents))], want, rtol=0, atol=1e-6)
    assert [r["index"] for r in body["results"]] == sorted(range(len(documents)), key=lambda i: -want[i])


def test_rerank_scores_equal_the_in_process_pipeline(base_url):
    import openvino_genai

    pipeline = openvino_genai.TextRerankPipeline(str(RERANKER_DIR), "CPU", **F32_PLUGIN_CONFIG)
    query, documents = json.loads((RERANKER_DIR / "reference.json").read_text())["cases"][1]
    want = {index: score for index, score in pipeline.rerank(query, documents)}
    body = requests.post(f"{base_url}/rerank", json={"model": "tiny-reranker", "query": query,
                                                     "documents": documents}, timeout=30).json()
    assert {r["index"]: r["relevance_score"] for r in body["results"]} == want
