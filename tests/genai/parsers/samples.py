"""Model outputs of every parser's format, taken from OVMS's parser tests (src/test/llm/output_parsers/*_test.cpp)
and the formats' documentation, with what the non-streamed parse must give.

Each sample: (tool parser, reasoning parser, answer, expected reasoning, expected content,
[(name, arguments)]). Arguments are written as ``json.dumps`` writes them (OVMS writes them compact), except
Harmony's, which pass through as the model wrote them, as in OVMS.
"""
from __future__ import annotations

TOOLS = [
    {"type": "function", "function": {"name": "string_int_tool", "parameters": {"type": "object", "properties": {
        "arg1": {"type": "string"}, "arg2": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "location": {"type": "string"}, "unit": {"type": "string"}, "days": {"type": "integer"}}}}},
]

_ATEM = ('<atem:function_calls>\n<atem:invoke name="get_weather">\n<atem:parameter name="location">Paris'
         '</atem:parameter>\n<atem:parameter name="unit">celsius</atem:parameter>\n</atem:invoke>\n'
         '</atem:function_calls>')

SAMPLES = [
    # hermes3 (Qwen2.5, Hermes 3)
    ("hermes3", None, '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>',
     None, "", [("get_weather", '{"location": "Paris"}')]),
    ("hermes3", "qwen3", '<think>\nThe user asks about Paris.\n</think>\n\nLet me check. <tool_call>\n{"name": '
     '"get_weather", "arguments": {"location": "Paris", "days": 3}}\n</tool_call>\n<tool_call>\n{"name": '
     '"get_weather", "arguments": {"location": "Zürich"}}\n</tool_call>',
     "The user asks about Paris.", "Let me check.",
     [("get_weather", '{"location": "Paris", "days": 3}'), ("get_weather", '{"location": "Zürich"}')]),
    # llama3
    ("llama3", None, '<|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris"}}; '
     '{"name": "string_int_tool", "parameters": {"arg1": "a", "arg2": 1}}', None, "",
     [("get_weather", '{"location": "Paris"}'), ("string_int_tool", '{"arg1": "a", "arg2": 1}')]),
    ("llama3", None, '{"name": "example_tool", "parameters": {"arg1": "value1", "arg2": 42}}', None, "",
     [("example_tool", '{"arg1": "value1", "arg2": 42}')]),
    # phi4 (phi4_output_parser_test.cpp)
    ("phi4", None, 'This is a content part and next will be a tool call.\n\nfunctools[{"name": "example_tool", '
     '"arguments": {"arg1": "value1", "arg2": 42}}]', None, "This is a content part and next will be a tool call.",
     [("example_tool", '{"arg1": "value1", "arg2": 42}')]),
    ("phi4", None, 'functools[{"name": "example_tool", "arguments": {"arg1": "value1", "arg2": 42}}, {"name": '
     '"another_tool", "arguments": {"param1": "data", "param2": true}}, {"name": "third_tool", "arguments": '
     '{"key": "value"}}]', None, "",
     [("example_tool", '{"arg1": "value1", "arg2": 42}'), ("another_tool", '{"param1": "data", "param2": true}'),
      ("third_tool", '{"key": "value"}')]),
    ("phi4", None, "This is a regular model response without tool calls.", None,
     "This is a regular model response without tool calls.", []),
    # mistral (mistral_output_parser_test.cpp)
    ("mistral", None, '[TOOL_CALLS][{"name": "example_tool", "arguments": {"arg1": "value1", "arg2": 42}}]</s>',
     None, "", [("example_tool", '{"arg1": "value1", "arg2": 42}')]),
    ("mistral", None, '[{"name": "example_tool", "arguments": {"arg1": "value1", "arg2": 42}}, {"name": "t2", '
     '"arguments": {"x": [1, 2.5, null]}}]</s>', None, "",
     [("example_tool", '{"arg1": "value1", "arg2": 42}'), ("t2", '{"x": [1, 2.5, null]}')]),
    ("mistral", None, "This is a regular model response without tool calls.", None,
     "This is a regular model response without tool calls.", []),
    # devstral (devstral_output_parser_test.cpp)
    ("devstral", None, 'Reasoning before tool call [TOOL_CALLS] example_tool [ARGS]{"arg1":"value1","arg2":42}</s>',
     None, "Reasoning before tool call", [("example_tool", '{"arg1": "value1", "arg2": 42}')]),
    ("devstral", None, "Reasoning before tool call [TOOL_CALLS]example_tool[ARGS]</s>", None,
     "Reasoning before tool call", [("example_tool", "{}")]),
    # qwen3coder (qwen3coder_output_parser_test.cpp)
    ("qwen3coder", None, "<tool_call>\n<function=string_int_tool>\n<parameter=arg1>\nvalue1line1\nvalue1line2\n"
     "</parameter>\n<parameter=arg2>\n42\n</parameter>\n</function>\n</tool_call>", None, "",
     [("string_int_tool", '{"arg1": "value1line1\\nvalue1line2", "arg2": 42}')]),
    ("qwen3coder", "qwen3", "<think>\nPlan.\n</think>\n\nI will call it.\n<tool_call><function=string_int_tool>"
     "<parameter=arg1>7</parameter></function></tool_call><tool_call><function=get_weather>"
     "<parameter=location>Paris</parameter><parameter=days>3</parameter></function></tool_call>",
     "Plan.", "I will call it.",
     [("string_int_tool", '{"arg1": "7"}'), ("get_weather", '{"location": "Paris", "days": 3}')]),
    # minicpm5 (minicpm5_output_parser_test.cpp)
    ("minicpm5", "minicpm5", '<think>\nWeather lookup.\n</think>\n<function name="get_weather"><param name='
     '"location">Beijing</param><param name="unit">celsius</param></function>', "Weather lookup.", "",
     [("get_weather", '{"location": "Beijing", "unit": "celsius"}')]),
    # onyx (onyx_output_parser_test.cpp)
    ("onyx", "onyx", " to=self<|message|>I should look up Paris weather.<|eom|> to=get_weather<|message|>"
     + _ATEM + "<|eot|>", "I should look up Paris weather.", "",
     [("get_weather", '{"location": "Paris", "unit": "celsius"}')]),
    ("onyx", "onyx", " to=self<|message|>I need the weather first.<|eom|> to=get_weather<|message|>" + _ATEM +
     "<|eom|><|start|>assistant to=user<|message|>I will provide result when I have tool call result.<|eot|>",
     "I need the weather first.", "I will provide result when I have tool call result.",
     [("get_weather", '{"location": "Paris", "unit": "celsius"}')]),
    ("qwen3coder", None, "First <tool_call>\n<function=get_weather>\n<parameter=location>\nParis\n</parameter>\n"
     "</function>\n</tool_call>\nthen, after a word,\n<tool_call>\n<function=get_weather>\n<parameter=location>\n"
     "Rome\n</parameter>\n</function>\n</tool_call>\n\nDone.", None, "First\nthen, after a word,\n\nDone.",
     [("get_weather", '{"location": "Paris"}'), ("get_weather", '{"location": "Rome"}')]),
    ("onyx", "onyx", " to=user<|message|>Send email to=admin for help.<|eot|>", None,
     "Send email to=admin for help.", []),
    # lfm2 (lfm2_output_parser_test.cpp, lfm25_output_parser_test.cpp)
    ("lfm2", "lfm2", "<think>Two configs.</think><|tool_call_start|>[dummy1(config={'name': 'astro_config', "
     "'value': 99}), dummy2(config={'name': 'second_config', 'value': 199})]<|tool_call_end|>", "Two configs.", "",
     [("dummy1", '{"config": {"name": "astro_config", "value": 99}}'),
      ("dummy2", '{"config": {"name": "second_config", "value": 199}}')]),
    ("lfm2", None, 'Checking. <|tool_call_start|>[test1(arg1="data1, data2"), check_status(flag=True), '
     "generate_DNA_sequence(length=100, preferences=['G', 'C'])]<|tool_call_end|>", None, "Checking.",
     [("test1", '{"arg1": "data1, data2"}'), ("check_status", '{"flag": true}'),
      ("generate_DNA_sequence", '{"length": 100, "preferences": ["G", "C"]}')]),
    ("lfm2", None, "<|tool_call_start|>[get_weather(location='Paris')]<|tool_call_end|>Checking Paris, then "
     "Rome.\n<|tool_call_start|>[get_weather(location=\"Rome\", days=2)]<|tool_call_end|>", None,
     "Checking Paris, then Rome.",
     [("get_weather", '{"location": "Paris"}'), ("get_weather", '{"location": "Rome", "days": 2}')]),
    # gemma4 (gemma4_output_parser_test.cpp)
    ("gemma4", "gemma4", '<|channel>thought\nSome reasoning content<channel|><|tool_call>call:example_tool{arg1:'
     '<|"|>value1<|"|>,arg2:42}<tool_call|>', "Some reasoning content", "",
     [("example_tool", '{"arg1": "value1", "arg2": 42}')]),
    ("gemma4", "gemma4", '<|tool_call>call:dummy{config:{name:<|"|>astro_config<|"|>,value:99}}<tool_call|>'
     '<|tool_call>call:generate_DNA_sequence{length:100,preferences:[<|"|>G<|"|>,<|"|>C<|"|>]}<tool_call|>', None,
     "", [("dummy", '{"config": {"name": "astro_config", "value": 99}}'),
          ("generate_DNA_sequence", '{"length": 100, "preferences": ["G", "C"]}')]),
    ("gemma4", None, '<|tool_call>call:get_weather{location:<|"|>Paris<|"|>}call:get_weather{location:<|"|>Rome'
     '<|"|>,days:2}<tool_call|>Both asked.', None, "Both asked.",
     [("get_weather", '{"location": "Paris"}'), ("get_weather", '{"location": "Rome", "days": 2}')]),
    ("gemma4", "gemma4", "<|channel>thought\nSome reasoning content<channel|>SOME CONTENT WITHOUT TOOL CALL",
     "Some reasoning content", "SOME CONTENT WITHOUT TOOL CALL", []),
    # gptoss (gptoss_output_parser_test.cpp, the Harmony format)
    ("gptoss", "gptoss", "<|channel|>analysis<|message|>User wants Paris weather.<|end|><|start|>assistant"
     "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>",
     "User wants Paris weather.", "", [("get_weather", '{"location":"Paris"}')]),
    ("gptoss", "gptoss", "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final"
     "<|message|>It is sunny in Paris.<|return|>", "Simple.", "It is sunny in Paris.", []),
    # qwen3 reasoning alone
    (None, "qwen3", "<think>\nhmm\n</think>\n\nAnswer", "hmm", "Answer", []),
    (None, "qwen3", "No thinking here.", None, "No thinking here.", []),
]
