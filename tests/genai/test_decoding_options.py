"""Decoding and KV-cache options of OVMS's LLM graphs: speculative decoding (draft_models_path) and prompt lookup
(plugin_config prompt_lookup) give the plain greedy answers token for token, with the accepted candidate tokens
counted in /metrics; cache_eviction_config and sparse_attention_config reach the scheduler; options the server
does not implement are refused by name."""
from __future__ import annotations

import pathlib
import re
import urllib.request

import openai
import pytest

from ovms.errors import ConfigError
from ovms.graph import read_graph_text
from tests.conftest import ThreadedServer
from tests.genai.conftest import LLM_DIR, llm_graph, write_graphs

PROMPTS = ["hello world this is a test of the tiny model hello world this is",
           "the quick brown fox jumps over the lazy dog the quick brown",
           "one two three four one two three four one two"]


def graph(**options) -> str:
    return llm_graph(4, **options)


@pytest.fixture(scope="module")
def assisted_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("assisted")
    graphs = {"plain": graph(),
              "speculative": graph(draft_models_path=f'"{LLM_DIR}"', draft_max_num_seqs=4),
              "lookup": graph().replace("plugin_config: '{ }'", "plugin_config: '{\"prompt_lookup\": true}'"),
              "evicting": graph(cache_eviction_config="{ start_size: 32, recent_size: 64, max_cache_size: 512, "
                                                      "aggregation_mode: SUM }",
                                sparse_attention_config="{ mode: TRISHAPE, num_last_dense_tokens_in_prefill: 10 }",
                                cache_interval_multiplier=2)}
    with ThreadedServer(config_path=write_graphs(root, graphs),
                        metrics_families=frozenset({"ovms_llm_draft_accepted_tokens",
                                                    "ovms_llm_generated_tokens"})) as server:
        yield server


def complete(client, model: str, prompt: str, **extra) -> str:
    response = client.completions.create(model=model, prompt=prompt, max_tokens=40, temperature=0,
                                         extra_body={"ignore_eos": True, **extra})
    return response.choices[0].text


def metric(server, family: str, model: str) -> float:
    with urllib.request.urlopen(f"http://{server.rest_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf'^{family}{{name="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert match, f"{family} for {model} not in /metrics:\n{text}"
    return float(match.group(1))


def test_speculative_and_prompt_lookup_answer_as_plain_greedy_decoding(assisted_server):
    client = openai.OpenAI(base_url=f"http://{assisted_server.rest_url}/v3", api_key="unused")
    for prompt in PROMPTS:
        plain = complete(client, "plain", prompt)
        assert plain  # the fixture says something
        assert complete(client, "speculative", prompt) == plain
        assert complete(client, "speculative", prompt, num_assistant_tokens=3) == plain
        assert complete(client, "speculative", prompt, assistant_confidence_threshold=0.4) == plain
        assert complete(client, "lookup", prompt) == plain
        assert complete(client, "lookup", prompt, num_assistant_tokens=2, max_ngram_size=2) == plain
        # short prompts: nothing to evict, and the sparse prefill is dense for the last 10 tokens
        assert complete(client, "evicting", prompt) == plain
    # The model drafting for itself: the main model accepts candidates, so fewer steps than tokens.
    accepted = metric(assisted_server, "ovms_llm_draft_accepted_tokens", "speculative")
    generated = metric(assisted_server, "ovms_llm_generated_tokens", "speculative")
    assert 0 < accepted < generated
    assert metric(assisted_server, "ovms_llm_draft_accepted_tokens", "plain") == 0


def test_assisted_fields_are_checked_as_ovms_does(assisted_server):
    client = openai.OpenAI(base_url=f"http://{assisted_server.rest_url}/v3", api_key="unused")
    with pytest.raises(openai.BadRequestError) as info:
        complete(client, "speculative", "hi", num_assistant_tokens=-1)
    assert "num_assistant_tokens is not an unsigned integer" in info.value.response.text
    with pytest.raises(openai.BadRequestError) as info:
        complete(client, "lookup", "hi", max_ngram_size="3")
    assert "max_ngram_size is not an unsigned integer" in info.value.response.text


@pytest.mark.parametrize("options, message", [
    ({"draft_max_num_seqs": 4}, "Draft model path is not provided, but draft scheduler options are set"),
    ({"draft_device": '"CPU"'}, "Draft model path is not provided"),
    ({"draft_models_path": '"x"', "draft_eagle3_mode": "true"}, "draft_eagle3_mode is not supported"),
    ({"draft_models_path": '"x"', "draft_block_size": 32}, "draft_block_size is not supported"),
])
def test_draft_options_refused_as_ovms_refuses_them(options, message):
    with pytest.raises(ConfigError) as info:
        read_graph_text(graph(**options), pathlib.Path("/graphs"))
    assert message in str(info.value)


def test_draft_path_is_relative_to_the_graph_and_lookup_excludes_a_draft():
    options = read_graph_text(graph(draft_models_path='"draft"', draft_cache_size=2), pathlib.Path("/graphs/g"))
    assert options.draft_models_path == pathlib.Path("/graphs/g/draft")
    assert options.draft_scheduler == {"cache_size": 2}
    assert options.decoding == "speculative"
    both = graph(draft_models_path='"draft"').replace("plugin_config: '{ }'",
                                                      "plugin_config: '{\"prompt_lookup\": true}'")
    with pytest.raises(ConfigError, match="choose one decoding method"):
        read_graph_text(both, pathlib.Path("/graphs"))


@pytest.mark.parametrize("options, message", [
    ({"cache_eviction_config": "{ start_size: 32, recent_size: 64 }"},
     "cache_eviction_config: required field max_cache_size is missing"),
    ({"cache_eviction_config": "{ start_size: 32, recent_size: 64, max_cache_size: 512, aggregation_mode: MAX }"},
     "cache_eviction_config.aggregation_mode: 'MAX' is not one of SUM, NORM_SUM"),
    ({"sparse_attention_config": "{ mode: TRISHAPE, window: 3 }"}, "sparse_attention_config: unknown field(s) window"),
    ({"chat_template_mode": "MINJA"}, "chat_template_mode MINJA is not supported"),
    ({"max_cache": 3}, "graph node option(s) max_cache unknown to OVMS's text_generation calculator"),
    ({"pipeline_type": "LM", "cache_eviction_config": "{ start_size: 1, recent_size: 1, max_cache_size: 8 }"},
     "need continuous batching; pipeline_type LM runs one request at a time"),
])
def test_graph_options_checked_and_unknown_ones_refused(options, message):
    with pytest.raises(ConfigError) as info:
        read_graph_text(graph(**options), pathlib.Path("/graphs"))
    assert message in str(info.value)


def test_kv_cache_options_are_read():
    options = read_graph_text(graph(cache_eviction_config="{ start_size: 32, recent_size: 64, max_cache_size: 512, "
                                                          "kv_crush_config: { budget: 4, anchor_point_mode: MEAN } }",
                                    sparse_attention_config="{ mode: XATTENTION, xattention_threshold: 1 }"),
                              pathlib.Path("/graphs"))
    assert options.cache_eviction == {"start_size": 32, "recent_size": 64, "max_cache_size": 512,
                                      "kv_crush_config": {"budget": 4, "anchor_point_mode": "MEAN"}}
    assert options.sparse_attention == {"mode": "XATTENTION", "xattention_threshold": 1.0}
