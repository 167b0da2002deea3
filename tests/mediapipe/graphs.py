"""A repository of MediaPipe graphs with Python nodes, written as OVMS's documentation writes them."""
from __future__ import annotations

import json
import pathlib
import textwrap

import openvino as ov

from tests.fixtures.models import dummy

PYTHON_NODE = """
node {{
  name: "{name}"
  calculator: "PythonExecutorCalculator"
  input_side_packet: "PYTHON_NODE_RESOURCES:py"
{streams}
  node_options: {{
    [type.googleapis.com / mediapipe.PythonExecutorCalculatorOptions]: {{
      handler_path: "{handler}"
    }}
  }}
}}
"""

# docs/python_support/quickstart.md: the handler, with a finalize that leaves a mark to check the unload
UPPERCASE = '''
import pathlib

from pyovms import Tensor

class OvmsPythonModel:

    def initialize(self, kwargs: dict):
        self.kwargs = kwargs

    def execute(self, inputs: list):
        input_data = inputs[0]
        text = bytes(input_data).decode()
        output_data = text.upper().encode()
        return [Tensor("uppercase", output_data)]

    def finalize(self):
        pathlib.Path(self.kwargs["base_path"], "finalized.json").write_text(
            __import__("json").dumps(self.kwargs, sort_keys=True))
'''

UPPERCASE_GRAPH = """
input_stream: "OVMS_PY_TENSOR:text"
output_stream: "OVMS_PY_TENSOR:uppercase"
""" + PYTHON_NODE.format(name="pythonNode", handler="model.py",
                         streams='  input_stream: "INPUT:text"\n  output_stream: "OUTPUT:uppercase"')

# A Python pre- and post-processing pair around the served model "dummy" (b FP32 [1,10] -> a = b + 1), wired
# through converter and inference nodes as the CLIP demo (demos/python_demos/clip_image_classification) is.
PREPROCESS = '''
import numpy as np
from pyovms import Tensor

class OvmsPythonModel:
    def execute(self, inputs):
        numbers = np.array(inputs[0], dtype=np.float32)
        return [Tensor("b_py", (numbers * 2).reshape(1, -1))]
'''
POSTPROCESS = '''
import numpy as np
from pyovms import Tensor

class OvmsPythonModel:
    def initialize(self, kwargs):
        self.output_name = kwargs["output_names"][0]

    def execute(self, inputs):
        model_output = np.array(inputs[0])
        text = " ".join(f"{v:g}" for v in model_output.ravel()).encode()
        return [Tensor(self.output_name, text), Tensor("scaled", model_output * 10)]
'''
MODEL_GRAPH = """
input_stream: "OVMS_PY_TENSOR:numbers"
output_stream: "OVMS_PY_TENSOR:summary"
output_stream: "OVMS_PY_TENSOR_SCALED:scaled"
""" + PYTHON_NODE.format(name="PythonPreprocess", handler="preprocess.py",
                         streams='  input_stream: "INPUT:numbers"\n  output_stream: "OUTPUT:b_py"') + """
node {
  name: "ToOV"
  calculator: "PyTensorOvTensorConverterCalculator"
  input_stream: "OVMS_PY_TENSOR:b_py"
  output_stream: "OVTENSOR:b_ov"
}
node {
  calculator: "OpenVINOModelServerSessionCalculator"
  output_side_packet: "SESSION:session"
  node_options: {
    [type.googleapis.com / mediapipe.OpenVINOModelServerSessionCalculatorOptions]: {
      servable_name: "dummy"
      servable_version: "1"
    }
  }
}
node {
  name: "dummyInference"
  calculator: "OpenVINOInferenceCalculator"
  input_side_packet: "SESSION:session"
  input_stream: "OVTENSOR:b_ov"
  output_stream: "OVTENSOR:a_ov"
  node_options: {
    [type.googleapis.com / mediapipe.OpenVINOInferenceCalculatorOptions]: {
      tag_to_input_tensor_names { key: "OVTENSOR" value: "b" }
      tag_to_output_tensor_names { key: "OVTENSOR" value: "a" }
    }
  }
}
node {
  name: "ToPy"
  calculator: "PyTensorOvTensorConverterCalculator"
  input_stream: "OVTENSOR:a_ov"
  output_stream: "OVMS_PY_TENSOR:a_py"
  node_options: {
    [type.googleapis.com / mediapipe.PyTensorOvTensorConverterCalculatorOptions]: {
      tag_to_output_tensor_names { key: "OVMS_PY_TENSOR" value: "a_py" }
    }
  }
}
""" + PYTHON_NODE.format(name="PythonPostprocess", handler="postprocess.py",
                         streams='  input_stream: "INPUT:a_py"\n  output_stream: "OUTPUT:summary"\n'
                                 '  output_stream: "SCALED:scaled"')

# reference.md "Generative mode": execute yields, with LOOPBACK, a back edge and SyncSetInputStreamHandler.
GENERATOR = '''
import pathlib
import time

from pyovms import Tensor

class OvmsPythonModel:
    def initialize(self, kwargs):
        self.base_path = pathlib.Path(kwargs["base_path"])

    def execute(self, inputs):
        words = bytes(inputs[0]).decode().split(" ")
        try:
            for index, word in enumerate(words):
                if word == "boom":
                    raise RuntimeError(f"word {index} exploded")
                if word == "slow":
                    time.sleep(0.2)
                yield [Tensor("token", f"{index}:{word}".encode())]
        finally:
            (self.base_path / "generator_closed").write_text(str(index))
'''
GENERATOR_GRAPH = """
input_stream: "OVMS_PY_TENSOR:text"
output_stream: "OVMS_PY_TENSOR:token"

node {
  name: "generator"
  calculator: "PythonExecutorCalculator"
  input_side_packet: "PYTHON_NODE_RESOURCES:py"
  input_stream: "INPUT:text"
  input_stream: "LOOPBACK:loopback"
  input_stream_info: {
    tag_index: 'LOOPBACK:0',
    back_edge: true
  }
  input_stream_handler {
    input_stream_handler: "SyncSetInputStreamHandler",
    options {
      [mediapipe.SyncSetInputStreamHandlerOptions.ext] {
        sync_set {
          tag_index: "LOOPBACK:0"
        }
      }
    }
  }
  output_stream: "OUTPUT:token"
  output_stream: "LOOPBACK:loopback"
  node_options: {
    [type.googleapis.com / mediapipe.PythonExecutorCalculatorOptions]: {
      handler_path: "generator.py"
    }
  }
}
"""

FAULTY = '''
from pyovms import Tensor

class OvmsPythonModel:
    def execute(self, inputs):
        text = bytes(inputs[0]).decode()
        if text.endswith("boom"):  # over REST, BYTES arrive length-prefixed
            raise ValueError("cannot handle boom")
        return [Tensor("out", text[::-1].encode())]
'''
FAULTY_GRAPH = """
input_stream: "OVMS_PY_TENSOR:text"
output_stream: "OVMS_PY_TENSOR:out"
""" + PYTHON_NODE.format(name="reverser", handler="faulty.py",
                         streams='  input_stream: "INPUT:text"\n  output_stream: "OUTPUT:out"')

# As OVMS's demos/mediapipe/multi_model_graph: untagged graph streams (OpenVINO tensors) straight into a model
# node (no Python), its tensor names mapped from the node's own tags
MODEL_ONLY_GRAPH = """
input_stream: "in"
output_stream: "out"
node {
  calculator: "OpenVINOModelServerSessionCalculator"
  output_side_packet: "SESSION:session"
  node_options: {
    [type.googleapis.com / mediapipe.OpenVINOModelServerSessionCalculatorOptions]: { servable_name: "dummy" }
  }
}
node {
  calculator: "OpenVINOInferenceCalculator"
  input_side_packet: "SESSION:session"
  input_stream: "DUMMY_IN:in"
  output_stream: "DUMMY_OUT:out"
  node_options: {
    [type.googleapis.com / mediapipe.OpenVINOInferenceCalculatorOptions]: {
      tag_to_input_tensor_names { key: "DUMMY_IN" value: "b" }
      tag_to_output_tensor_names { key: "DUMMY_OUT" value: "a" }
    }
  }
}
"""

UNKNOWN_CALCULATOR_GRAPH = UPPERCASE_GRAPH.replace('"PythonExecutorCalculator"', '"PythonExecutorCalculatr"')
MISSING_HANDLER_GRAPH = UPPERCASE_GRAPH.replace('"model.py"', '"missing.py"')
UNCONNECTED_GRAPH = UPPERCASE_GRAPH.replace('input_stream: "INPUT:text"', 'input_stream: "INPUT:txt"')

NO_CONVERTER_GRAPH = """
input_stream: "OVMS_PY_TENSOR:text"
output_stream: "OVTENSOR:a"
node {
  calculator: "OpenVINOModelServerSessionCalculator"
  output_side_packet: "SESSION:session"
  node_options: {
    [type.googleapis.com / mediapipe.OpenVINOModelServerSessionCalculatorOptions]: { servable_name: "dummy" }
  }
}
node {
  name: "direct"
  calculator: "OpenVINOInferenceCalculator"
  input_side_packet: "SESSION:session"
  input_stream: "OVTENSOR:text"
  output_stream: "OVTENSOR:a"
}
"""

WITH_LLM_GRAPH = UPPERCASE_GRAPH + """
node {
  name: "LLMExecutor"
  calculator: "HttpLLMCalculator"
  input_stream: "LOOPBACK:loopback"
  input_stream: "HTTP_REQUEST_PAYLOAD:input"
  output_stream: "LOOPBACK:loopback"
  output_stream: "HTTP_RESPONSE_PAYLOAD:output"
  node_options: {
    [type.googleapis.com / mediapipe.LLMCalculatorOptions]: { models_path: "./" }
  }
}
"""

INVALID = {"bad_calculator": UNKNOWN_CALCULATOR_GRAPH, "bad_llm": WITH_LLM_GRAPH, "bad_handler": MISSING_HANDLER_GRAPH,
           "bad_stream": UNCONNECTED_GRAPH, "bad_model": MODEL_GRAPH.replace('"dummy"', '"no_such_model"'),
           "bad_wiring": NO_CONVERTER_GRAPH}


def write_graph_repository(root: pathlib.Path) -> pathlib.Path:
    """The graphs beside the model they call; returns config.json (mediapipe_config_list and a graph directory
    in model_config_list, both as OVMS allows)."""
    ov.save_model(dummy(1.0), str(root / "dummy" / "1" / "model.xml"), compress_to_fp16=False)
    files = {
        "upper/graph.pbtxt": UPPERCASE_GRAPH, "upper/model.py": UPPERCASE,
        "mixed/graph.pbtxt": MODEL_GRAPH, "mixed/preprocess.py": PREPROCESS, "mixed/postprocess.py": POSTPROCESS,
        "stream/graph.pbtxt": GENERATOR_GRAPH, "stream/generator.py": GENERATOR,
        "faulty/graph.pbtxt": FAULTY_GRAPH, "faulty/faulty.py": FAULTY,
        "model_only/graph.pbtxt": MODEL_ONLY_GRAPH,
    }
    for name, text in INVALID.items():
        files[f"{name}/graph.pbtxt"] = text
        files[f"{name}/model.py"] = UPPERCASE
    files["bad_model/preprocess.py"], files["bad_model/postprocess.py"] = PREPROCESS, POSTPROCESS
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    config = {
        "model_config_list": [{"config": {"name": "dummy", "base_path": "dummy"}},
                              {"config": {"name": "mixed", "base_path": "mixed"}}],
        "mediapipe_config_list": [{"name": "python_model", "graph_path": str(root / "upper" / "graph.pbtxt")},
                                  {"name": "stream", "base_path": "stream"},
                                  {"name": "faulty", "base_path": "faulty"},
                                  {"name": "model_only", "base_path": "model_only"}]
                                 + [{"name": name, "base_path": name} for name in INVALID],
    }
    path = root / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path
