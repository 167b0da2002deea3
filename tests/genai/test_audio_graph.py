"""Speech servables from OVMS graph.pbtxt options, from `--task speech2text|text2speech` on the command line, and the
graphs and optimum commands pull mode writes for those tasks."""
from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import openai
import pytest
import soundfile

from ovms.errors import ConfigError
from ovms.graph import read_graph_text
from ovms.pull import convert, graph, tasks
from tests.genai.conftest import FIXTURES
from tests.test_cli import serve, stop, wait_ready

WHISPER_DIR = FIXTURES / "tiny-whisper"
SPEECHT5_DIR = FIXTURES / "tiny-speecht5"


def node(calculator: str, options: str) -> str:
    return (f'node {{ calculator: "{calculator}" node_options: {{ '
            f'[type.googleapis.com / mediapipe.{calculator}Options]: {{ {options} }} }} }}')


def test_pulled_graphs_read_back_as_speech_servables(tmp_path):
    for task, calculator in (("speech2text", "S2tCalculator"), ("text2speech", "T2sCalculator")):
        text = graph.render(task, graph.GraphOptions(model_name="m", target_device="CPU", num_streams=2))
        assert f'calculator: "{calculator}"' in text and 'models_path: "./"' in text
        assert ("LOOPBACK:loopback" in text) == (task == "speech2text")  # as OVMS's graph_export.cpp writes them
        options = read_graph_text(text, tmp_path)
        assert options.task == task and options.models_path == tmp_path / "."
        assert options.device == "CPU" and options.plugin_config == {"NUM_STREAMS": "2"}
        assert options.loopback == (task == "speech2text")  # streamed transcriptions need it, as in OVMS
    text = graph.render("speech2text", graph.GraphOptions(plugin_config='{"PERFORMANCE_HINT":"LATENCY"}'))
    assert read_graph_text(text, tmp_path).plugin_config == {"PERFORMANCE_HINT": "LATENCY"}


def test_speech_graph_options(tmp_path):
    options = read_graph_text(node("S2tCalculator", 'models_path: "w", enable_word_timestamps: true'), tmp_path)
    assert options.enable_word_timestamps is True and options.models_path == tmp_path / "w"
    options = read_graph_text(node("T2sCalculator", 'models_path: "t" voices: { name: "a" path: "v/a.bin" } '
                                                    'voices: { name: "b" path: "/abs/b.bin" } speed_min: 0.5 '
                                                    'speed_max: 1.5'), tmp_path)
    assert options.voices == {"a": tmp_path / "v/a.bin", "b": pathlib.Path("/abs/b.bin")}
    assert (options.speed_min, options.speed_max) == (0.5, 1.5)


@pytest.mark.parametrize("text,message", [
    (node("S2tCalculator", 'models_path: "w", max_num_seqs: 4'),
     "graph node option(s) max_num_seqs unknown to OVMS's speech2text calculator; the options it has: "
     "enable_word_timestamps, models_path, plugin_config, target_device"),
    (node("T2sCalculator", 'models_path: "t", speed_min: 2.0, speed_max: 1.0'),
     "Invalid T2sCalculatorOptions: speed_min (2) must be <= speed_max (1)"),
    (node("T2sCalculator", 'models_path: "t", voices: { name: "a" }'),
     "graph option voices: name and path are required strings"),
])
def test_speech_graph_errors_name_the_option(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        read_graph_text(text, tmp_path)
    assert message in str(caught.value)


def test_task_inference_for_speech_repositories():
    assert tasks.infer_task((WHISPER_DIR / "config.json").read_bytes(), None) == "speech2text"
    assert tasks.infer_task((SPEECHT5_DIR / "config.json").read_bytes(), None) == "text2speech"
    kokoro = json.dumps({"architectures": None, "n_mels": 80}).encode()
    assert tasks.infer_task(kokoro, None) == "text2speech"
    assert tasks.infer_task(json.dumps({"architectures": ["T5ForConditionalGeneration"]}).encode(),
                            None) == "text_generation"


def test_optimum_export_commands_for_speech():
    cmd = convert.export_command("microsoft/speecht5_tts", pathlib.Path("/m"), "text2speech", "fp16", None,
                                 vocoder="microsoft/speecht5_hifigan")
    assert cmd[cmd.index("--model-kwargs") + 1] == '{"vocoder": "microsoft/speecht5_hifigan"}'
    cmd = convert.export_command("hexgrad/Kokoro-82M", pathlib.Path("/m"), "text2speech", "fp16", None,
                                 model_type="kokoro")
    assert cmd[cmd.index("--task") + 1] == "text-to-audio" and "--model-kwargs" not in cmd
    cmd = convert.export_command("./whisper", pathlib.Path("/m"), "speech2text", "fp16", None,
                                 optimum_task=convert.LOCAL_TASK["speech2text"])
    assert cmd[cmd.index("--task") + 1] == "automatic-speech-recognition-with-past"


def test_task_flags_serve_a_model_directory(tmp_path):
    """`ovms --model_path DIR --task speech2text|text2speech` (no graph.pbtxt): the graph is built in memory from
    the task flags, as OVMS does, and both endpoints answer."""
    process, _, rest_port = serve("--config_path", str(_config(tmp_path)), log_path=tmp_path / "ovms.log")
    try:
        wait_ready(rest_port, process, timeout=120)
        _answers(rest_port)
    finally:
        stop(process)
    process, _, rest_port = serve("--model_name", "whisper", "--model_path", str(WHISPER_DIR), "--task",
                                  "speech2text", "--num_streams", "1", log_path=tmp_path / "ovms2.log")
    try:
        wait_ready(rest_port, process, timeout=120)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{rest_port}/v3", api_key="x", max_retries=0) as client:
            samples = _low()
            assert client.audio.transcriptions.create(model="whisper", file=("a.wav", samples)).text == " a low hum"
    finally:
        stop(process)
    process, _, rest_port = serve("--model_name", "voice", "--model_path", str(SPEECHT5_DIR), "--task",
                                  "text2speech", log_path=tmp_path / "ovms3.log")
    try:
        wait_ready(rest_port, process, timeout=120)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{rest_port}/v3", api_key="x", max_retries=0) as client:
            wav = client.audio.speech.create(model="voice", input="Hello", voice="tiny").content
        assert soundfile.info(io.BytesIO(wav)).frames > 0
    finally:
        stop(process)


def _low() -> bytes:
    t = np.arange(16000) / 16000
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32), 16000, format="WAV")
    return buffer.getvalue()


def _config(tmp_path: pathlib.Path) -> pathlib.Path:
    """config.json listing the two fixture directories with the graphs pull mode writes for them."""
    entries = []
    for name, task, source in (("whisper", "speech2text", WHISPER_DIR), ("speecht5", "text2speech", SPEECHT5_DIR)):
        directory = tmp_path / name
        directory.mkdir()
        graph.write_graph(directory, task, graph.GraphOptions(model_name=name, models_path=str(source)))
        entries.append({"name": name, "base_path": str(directory)})
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"mediapipe_config_list": entries}))
    return path


def _answers(rest_port: int) -> None:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{rest_port}/v3", api_key="x", max_retries=0) as client:
        assert client.audio.transcriptions.create(model="whisper", file=("a.wav", _low())).text == " a low hum"
        wav = client.audio.speech.create(model="speecht5", input="Hello", voice="tiny").content
    assert soundfile.info(io.BytesIO(wav)).frames > 0
