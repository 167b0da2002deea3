"""Parser names as OVMS has them: the load errors, "none", auto-detection from chat templates."""
from __future__ import annotations

import pathlib

import pytest

from ovms.errors import ConfigError
from ovms.graph import read_graph_text
from ovms.genai.parsers import DISABLED, REASONING_PARSERS, TOOL_PARSERS, check_parser_names, detect_parsers, \
    resolve_parsers, special_tokens

GRAPH = """node {{
  calculator: "HttpLLMCalculator"
  node_options: {{
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: {{
      models_path: "./", {options}
    }}
  }}
}}"""


def graph(options: str):
    return read_graph_text(GRAPH.format(options=options), pathlib.Path("/models/x"), where="x/graph.pbtxt")


def test_the_names_are_ovms_names_in_ovms_order():
    assert TOOL_PARSERS == ("llama3", "hermes3", "phi4", "mistral", "gptoss", "qwen3coder", "devstral", "lfm2",
                            "gemma4", "onyx", "minicpm5")
    assert REASONING_PARSERS == ("qwen3", "gemma4", "gptoss", "onyx", "minicpm5", "lfm2")


@pytest.mark.parametrize("tool", TOOL_PARSERS + (DISABLED,))
def test_every_ovms_tool_parser_loads(tool):
    assert graph(f'tool_parser: "{tool}",').tool_parser == tool


@pytest.mark.parametrize("options, message", [
    ('tool_parser: "qwen3",', 'Unsupported tool_parser "qwen3" specified in graph configuration. Supported tool '
                              'parsers are: llama3, hermes3, phi4, mistral, gptoss, qwen3coder, devstral, lfm2, '
                              'gemma4, onyx, minicpm5'),
    ('tool_parser: "Hermes3",', 'Unsupported tool_parser "Hermes3"'),
    ('tool_parser: "pythonic",', 'Unsupported tool_parser "pythonic"'),
    ('reasoning_parser: "deepseek_r1",', 'Unsupported reasoning_parser "deepseek_r1" specified in graph '
                                         'configuration. Supported reasoning parsers are: qwen3, gemma4, gptoss, '
                                         'onyx, minicpm5, lfm2'),
    ('tool_parser: "lfm2", reasoning_parser: "qwen3",', "Cannot use tool parser lfm2 with reasoning parser qwen3 as "
                                                         "they have different requirements for special tokens"),
])
def test_what_ovms_does_not_have_fails_the_graph_with_its_message(options, message):
    with pytest.raises(ConfigError) as error:
        graph(options)
    assert message in str(error.value)


def test_guided_generation_is_read_from_the_graph():
    assert graph("enable_tool_guided_generation: false,").enable_tool_guided_generation is False
    assert graph("enable_tool_guided_generation: true,").enable_tool_guided_generation is True


# Template fragments with the markers OVMS's ChatTemplateAnalyzer looks for, as the real templates write them.
TEMPLATES = [
    ("{{- '<|start|>assistant<|channel|>analysis<|message|>' }}", ("gptoss", "gptoss")),
    ("<|start|>{{ m }}<|message|>{{ c }}<|eom|>{{ x }}<|eot|>", ("onyx", "onyx")),
    ("{{- '<|tool_call>call:' + name }}", ("gemma4", "gemma4")),
    ("<tool_call>\n<function={{ n }}>\n<parameter={{ k }}>\n{{ v }}\n</parameter>", ("qwen3coder", None)),
    ("<think>\n</think><tool_call>\n<function={{ n }}>\n<parameter={{ k }}>\n</parameter>", ("qwen3coder", "qwen3")),
    ('<function name="{{ n }}"><param name="{{ k }}">', ("minicpm5", "minicpm5")),
    ("<|tool_call_start|>[{{ calls }}]<|tool_call_end|>", ("lfm2", None)),
    ("{% if keep_past_thinking %}{{ message.thinking }}{% endif %}", ("lfm2", "lfm2")),
    ("<|tool|>{{ tools }}<|/tool|> functools[", ("phi4", None)),
    ("[TOOL_CALLS]{{ name }}[ARGS]{{ args }}", ("devstral", None)),
    ("[AVAILABLE_TOOLS]{{ tools }}[/AVAILABLE_TOOLS][TOOL_CALLS]", ("mistral", None)),
    ("{{- '<|python_tag|>' + tool_call }}", ("llama3", None)),
    ("<tool_call>\n{{ call | tojson }}\n</tool_call>", ("hermes3", None)),
    ("<tool_call>{{ c }}</tool_call>{% if '</think>' in content %}{{ content.split('</think>')[-1] }}{% endif %}",
     ("hermes3", "qwen3")),
    ("{{ '<think>\\n' }}", (None, "qwen3")),
    ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}", (None, None)),
    ("", (None, None)),
]


@pytest.mark.parametrize("template, parsers", TEMPLATES)
def test_detected_from_the_chat_template_as_ovms_detects(template, parsers):
    assert detect_parsers(template) == parsers


def test_the_graph_wins_and_none_turns_detection_off():
    template = "<tool_call>{{ c }}</tool_call><think>"
    assert resolve_parsers(None, None, template) == ("hermes3", "qwen3")
    assert resolve_parsers("llama3", None, template) == ("llama3", "qwen3")
    assert resolve_parsers(DISABLED, DISABLED, template) == (None, None)
    with pytest.raises(ValueError, match='Unsupported tool_parser "qwen3"'):
        check_parser_names("qwen3", None)


def test_the_markers_parsers_read_are_kept_in_the_text():
    assert special_tokens("devstral", None) == {"[TOOL_CALLS]", "[ARGS]"}
    assert {"<|channel|>", "<|message|>", "<|call|>", "<|constrain|>"} <= special_tokens("gptoss", "gptoss")
    assert special_tokens(None, None) == set()


def test_pull_help_names_every_parser():
    from ovms.pull.cli import add_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    for name in TOOL_PARSERS + REASONING_PARSERS:
        assert name in help_text, name
