"""ovms.backends.gguf_model: the GGUF header reader, models_path resolution and the load-time checks, on the
committed fixture and on headers written here (a header is all the checks read)."""
from __future__ import annotations

import json
import pathlib
import shutil
import struct

import pytest

from ovms.backends import gguf_model
from ovms.errors import ModelLoadError

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "genai"
GGUF_FILE = FIXTURES / "tiny-llm-gguf" / "tiny-llm-F16.gguf"
TYPE_IDS = {name: number for number, name in gguf_model.TENSOR_TYPES.items()}


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, list):
        if value and isinstance(value[0], str):
            return struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_string(v) for v in value)
        return struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    return struct.pack("<II", 4, value)


def write_header(path: pathlib.Path, metadata: dict, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> pathlib.Path:
    """A GGUF v3 header (no tensor data: the checks never read it)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, value in metadata.items():
        out += _string(key) + _value(value)
    for name, (kind, dims) in tensors.items():
        out += _string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", TYPE_IDS[kind], 0)
    path.write_bytes(out)
    return path


def llama3_like(**overrides) -> dict:
    metadata = {"general.architecture": "llama", "llama.context_length": 8192, "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.tokens": ["a", "\u0120b", "<|eot_id|>", "<think>"],
                "tokenizer.ggml.token_type": [1, 1, 3, 4], "tokenizer.ggml.merges": ["\u0120 b"]}
    metadata.update(overrides)
    return metadata


def q4_k_m_tensors(ffn_down: str = "Q6_K") -> dict:
    return {"token_embd.weight": ("Q4_K", (64, 6)), "blk.0.attn_q.weight": ("Q4_K", (64, 64)),
            "blk.0.ffn_down.weight": (ffn_down, (128, 64)), "blk.0.attn_norm.weight": ("F32", (64,))}


def test_the_fixture_header_describes_the_ir_it_came_from():
    header = gguf_model.check_servable(GGUF_FILE)
    config = json.loads((FIXTURES / "tiny-llm" / "config.json").read_text())
    assert header.version == 3 and header.architecture == "qwen2"
    assert header.context_length == config["max_position_embeddings"]
    assert header.metadata["qwen2.block_count"] == config["num_hidden_layers"]
    assert header.metadata["tokenizer.chat_template"] == (FIXTURES / "tiny-llm" / "chat_template.jinja").read_text()
    assert header.tensors["token_embd.weight"] == ("F16", (64, config["vocab_size"]))
    assert header.tensors["blk.1.attn_k.bias"] == ("F32", (32,))
    assert "output.weight" not in header.tensors  # tied to the embeddings
    for kind in ("Q8_0", "Q4_0"):
        quantized = gguf_model.check_servable(FIXTURES / "tiny-llm-gguf" / "quantized" / f"tiny-llm-{kind}.gguf")
        assert quantized.tensors["blk.0.ffn_down.weight"][0] == kind
        assert quantized.tensors["blk.0.attn_norm.weight"] == ("F32", (64,))


def test_the_byte_table_is_the_ir_detokenizers():
    """The GGUF's token bytes equal the IR detokenizer's for every id, but one: the IR's string output drops a
    lone NUL byte (token 191, 'Ā' in the byte-level alphabet), the GGUF's table keeps it."""
    from ovms.backends.genai_llm import token_byte_table as ir_table

    header = gguf_model.read_header(GGUF_FILE)
    table = gguf_model.token_byte_table(header)
    ir = ir_table(FIXTURES / "tiny-llm", len(table))
    differing = [i for i, (a, b) in enumerate(zip(table, ir)) if a != b]
    assert len(table) == len(ir) == 610
    assert differing == [191] and table[191] == b"\x00" and ir[191] == b""
    assert table[2] == b"" and table[header.metadata["tokenizer.ggml.tokens"].index("\u0120How")] == b" How"


def test_byte_table_control_user_defined_and_padding(tmp_path):
    path = write_header(tmp_path / "m.gguf", llama3_like(), {"token_embd.weight": ("F16", (8, 6))})
    table = gguf_model.token_byte_table(gguf_model.read_header(path))
    # control tokens decode to nothing; a user-defined token (<think>) is text; rows past the list are b""
    assert table == [b"a", b" b", b"", b"<think>", b"", b""]
    assert gguf_model.token_bytes("\u00e3\u0123\u0135") == "\u3053".encode()  # こ in GPT-2's byte alphabet
    assert gguf_model.token_bytes("<\uff5cUser\uff5c>") == "<\uff5cUser\uff5c>".encode()  # outside the alphabet


def test_a_llama3_style_q4_k_m_header_passes(tmp_path):
    header = gguf_model.check_servable(write_header(tmp_path / "m.gguf", llama3_like(), q4_k_m_tensors()))
    assert header.context_length == 8192


@pytest.mark.parametrize("metadata,tensors,message", [
    (llama3_like(**{"general.architecture": "gemma2"}), {},
     "GGUF architecture 'gemma2' is not supported by openvino_genai's GGUF reader (it builds llama, qwen2, qwen3)"),
    (llama3_like(**{"tokenizer.ggml.model": "llama"}), {},
     "GGUF tokenizer 'llama' (tokenizer.ggml.model) is not supported"),
    ({k: v for k, v in llama3_like().items() if k != "tokenizer.ggml.merges"}, {},
     "the GGUF has no tokenizer.ggml.merges"),
    (llama3_like(), q4_k_m_tensors(ffn_down="Q5_K"),
     "1 linear layers are Q5_K (first: blk.0.ffn_down.weight); openvino_genai builds linear layers from F16, "
     "Q8_0, Q4_0, Q4_1, Q4_K, Q6_K GGUF tensors only"),
    (llama3_like(), {"blk.0.attn_q.weight": ("F32", (64, 64)), "blk.0.attn_k.weight": ("BF16", (64, 64))},
     "2 linear layers are BF16/F32 (first: blk.0.attn_k.weight)"),
], ids=["architecture", "sentencepiece", "no-merges", "q5_k", "f32-bf16"])
def test_what_openvino_genai_cannot_build_is_refused_at_load(tmp_path, metadata, tensors, message):
    path = write_header(tmp_path / "m.gguf", metadata, tensors)
    with pytest.raises(ModelLoadError) as info:
        gguf_model.check_servable(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


@pytest.mark.parametrize("data,message", [
    (b"PK\x03\x04" + b"\0" * 40, "not a GGUF file (it starts with b'PK\\x03\\x04', not b'GGUF')"),
    (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "GGUF version 1; versions 2 and 3 are supported"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("general.architecture") + struct.pack("<IQ", 8, 1000),
     "the GGUF header is truncated at byte"),
    (b"GGUF", "4 bytes, too short for a GGUF file"),
], ids=["magic", "version", "truncated", "short"])
def test_unreadable_files_say_why(tmp_path, data, message):
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    with pytest.raises(gguf_model.GGUFFormatError) as info:
        gguf_model.read_header(path)
    assert message in str(info.value)


def test_truncated_download_of_the_fixture_is_caught(tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(GGUF_FILE.read_bytes()[:5000])  # inside the token list
    with pytest.raises(gguf_model.GGUFFormatError, match="truncated at byte .*download it again"):
        gguf_model.read_header(path)


def test_resolve(tmp_path):
    assert gguf_model.resolve(FIXTURES / "tiny-llm") is None  # an IR directory
    assert gguf_model.resolve(GGUF_FILE) == GGUF_FILE
    assert gguf_model.resolve(GGUF_FILE.parent) == GGUF_FILE
    empty = tmp_path / "empty"
    empty.mkdir()
    assert gguf_model.resolve(empty) is None  # LLMServable then says what an IR directory needs
    split = tmp_path / "split"
    split.mkdir()
    for i in (1, 2, 3):
        (split / f"m-Q4_K_M-{i:05d}-of-00003.GGUF").write_bytes(b"")
    assert gguf_model.resolve(split) == split / "m-Q4_K_M-00001-of-00003.GGUF"
    with pytest.raises(ModelLoadError, match="is part 2 of a split GGUF model; point it at the first part, "
                                             "m-Q4_K_M-00001-of-00003.GGUF"):
        gguf_model.resolve(split / "m-Q4_K_M-00002-of-00003.GGUF")
    assert gguf_model.split_parts(split / "m-Q4_K_M-00001-of-00003.GGUF")[2].is_file()  # the name as written
    (split / "m-Q4_K_M-00001-of-00003.GGUF").unlink()
    with pytest.raises(ModelLoadError, match="holds 0 GGUF models .*the first part of a split model is missing"):
        gguf_model.resolve(split)


def test_split_parts_must_all_be_there(tmp_path):
    first = tmp_path / "m-00001-of-00003.gguf"
    shutil.copy(GGUF_FILE, first)
    write_header(tmp_path / "m-00002-of-00003.gguf", {}, {"blk.1.ffn_up.weight": ("Q8_0", (64, 128))})
    with pytest.raises(ModelLoadError, match="parts of the split GGUF model are missing: m-00003-of-00003.gguf"):
        gguf_model.check_servable(first)
    write_header(tmp_path / "m-00003-of-00003.gguf", {}, {"blk.1.ffn_gate.weight": ("Q5_K", (64, 128))})
    with pytest.raises(ModelLoadError, match="linear layers are Q5_K \\(first: blk.1.ffn_gate.weight\\)"):
        gguf_model.check_servable(first)  # every part's tensors are checked
