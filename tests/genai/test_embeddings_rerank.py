"""Embeddings (openai client, float and base64) and Cohere-style rerank against the tiny fixtures."""
from __future__ import annotations

import json

import numpy as np
import requests

from tests.genai.conftest import EMBEDDER_DIR, FIXTURES, RERANKER_DIR


def test_embeddings_match_the_torch_reference(client):
    reference = json.loads((EMBEDDER_DIR / "reference.json").read_text())
    response = client.embeddings.create(model="tiny-embedder", input=reference["sentences"])
    got = np.array([d.embedding for d in response.data])
    want = np.array(reference["mean_normalized"])  # the graph asks for MEAN pooling and normalization
    assert np.allclose((got * want).sum(axis=1), 1.0, atol=1e-5)
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


def test_rerank_scores_equal_the_in_process_pipeline(base_url):
    import openvino_genai

    pipeline = openvino_genai.TextRerankPipeline(str(RERANKER_DIR), "CPU")
    query, documents = json.loads((RERANKER_DIR / "reference.json").read_text())["cases"][1]
    want = {index: score for index, score in pipeline.rerank(query, documents)}
    body = requests.post(f"{base_url}/rerank", json={"model": "tiny-reranker", "query": query,
                                                     "documents": documents}, timeout=30).json()
    assert {r["index"]: r["relevance_score"] for r in body["results"]} == want
