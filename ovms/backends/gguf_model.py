"""GGUF models for the LLM servable: which file a graph's ``models_path`` means, what its header says, and
whether openvino_genai can build it, so that a model it cannot serve fails at load with the reason.

openvino_genai reads a GGUF file directly (``LLMPipeline`` / ``ContinuousBatchingPipeline`` / ``Tokenizer`` on
the ``.gguf`` path; src/cpp/src/gguf_utils in openvino.genai). What its 2026.4 reader accepts, from those
sources, checked here before it runs:
- ``general.architecture`` llama, qwen2 or qwen3 (else "Unsupported model architecture");
- a gpt2-style byte-level BPE tokenizer (``tokenizer.ggml.model`` "gpt2": Llama 3, Qwen2/2.5/3); SentencePiece
  (``llama``: Llama 2, Mistral, TinyLlama) fails its assertion;
- linear layers in F16, Q8_0, Q4_0, Q4_1, Q4_K or Q6_K (Q4_K_M and Q4_K_S files are Q4_K + Q6_K); any other type
  (F32, BF16, Q5_K, Q3_K, Q2_K, IQ*) ends in "Unsupported quantization type".

The header is read without the tensor data (a memory map, a few MB for a 150k-token vocabulary). The format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""
from __future__ import annotations

import dataclasses
import mmap
import pathlib
import re
import struct

from ovms.errors import ModelLoadError

# OVMS's words (src/status.cpp, LLM_NODE_DIRECTORY_DOES_NOT_EXIST / LLM_NODE_PATH_DOES_NOT_EXIST_AND_NOT_GGUFFILE)
PATH_MISSING = "The LLM Node workspace path does not exist"
NOT_DIRECTORY_NOR_GGUF = "The LLM Node workspace path does not exist and not gguf model file"

ARCHITECTURES = ("llama", "qwen2", "qwen3")
# ggml tensor types (ggml.h enum ggml_type)
TENSOR_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
                11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
                18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8",
                25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
                39: "MXFP4"}
LINEAR_TYPES = ("F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")  # gguf_utils/building_blocks.cpp
_LINEAR = re.compile(r"^blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})(?P<ext>\.gguf)$", re.IGNORECASE)
CONTROL_TOKEN = 3  # llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte

# value types of the key-value section: struct format (scalars), 8 string, 9 array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFFormatError(ModelLoadError):
    """The file is not a readable GGUF (bad magic, unknown version, truncated header)."""


@dataclasses.dataclass(slots=True)
class GGUFHeader:
    """The key-value metadata and the tensor table (name -> (type name, shape in ggml order)) of a GGUF file."""

    path: pathlib.Path
    version: int
    metadata: dict
    tensors: dict[str, tuple[str, tuple[int, ...]]]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value else None


class _Cursor:
    """A bounds-checked reader over the file's bytes (an mmap: a slice is a copy of just that slice)."""

    def __init__(self, data, path: pathlib.Path) -> None:
        self.data = data
        self.offset = 0
        self.path = path

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise GGUFFormatError(f"{self.path}: the GGUF header is truncated at byte {self.offset} (the file has "
                                  f"{len(self.data)} bytes); the file is incomplete or not GGUF; download it again")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8", errors="surrogateescape")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.scalar("<I"), self.scalar("<Q")
            if item_kind == _STRING:
                return [self.string() for _ in range(count)]
            if item_kind in _SCALARS:
                fmt = _SCALARS[item_kind]
                size = struct.calcsize(fmt)
                raw = self.take(size * count)
                return list(struct.unpack(f"<{count}{fmt[1]}", raw)) if count else []
            raise GGUFFormatError(f"{self.path}: GGUF array of value type {item_kind} at byte {self.offset} is not "
                                  "supported (nested arrays)")
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        raise GGUFFormatError(f"{self.path}: unknown GGUF value type {kind} at byte {self.offset}; the file is "
                              "corrupted or from a newer GGUF version")


def read_header(path: pathlib.Path) -> GGUFHeader:
    """The metadata and tensor table of ``path``; GGUFFormatError says what is wrong with the file."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise GGUFFormatError(f"{path}: {size} bytes, too short for a GGUF file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(_Cursor(data, path), path)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the GGUF file: {exc.strerror or exc}") from None


def _parse(cursor: _Cursor, path: pathlib.Path) -> GGUFHeader:
    magic = cursor.take(4)
    if magic != b"GGUF":
        raise GGUFFormatError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    version = cursor.scalar("<I")
    if version not in (2, 3):
        raise GGUFFormatError(f"{path}: GGUF version {version}; versions 2 and 3 are supported")
    tensor_count, kv_count = cursor.scalar("<Q"), cursor.scalar("<Q")
    metadata = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<I"))
    tensors = {}
    for _ in range(tensor_count):
        name = cursor.string()
        dims = tuple(cursor.scalar("<Q") for _ in range(cursor.scalar("<I")))
        kind = cursor.scalar("<I")
        cursor.scalar("<Q")  # offset of the data
        tensors[name] = (TENSOR_TYPES.get(kind, f"type {kind}"), dims)
    return GGUFHeader(path, version, metadata, tensors)


def split_parts(path: pathlib.Path) -> list[pathlib.Path]:
    """Every file of the model ``path`` starts (``NAME-00001-of-0000N.gguf`` and its siblings, or just ``path``)."""
    m = _SPLIT.match(path.name)
    if m is None:
        return [path]
    count = int(m.group("count"))
    return [path.with_name(f"{m.group('stem')}-{i:05d}-of-{m.group('count')}{m.group('ext')}")
            for i in range(1, count + 1)]


def resolve(models_path: pathlib.Path) -> pathlib.Path | None:
    """The GGUF file a graph's ``models_path`` names, or None for an exported (IR) model directory.

    A ``.gguf`` file (a split model: its first part), or a directory holding no OpenVINO IR and one GGUF model
    (one file, or the parts of one split model). Errors say what was found.
    """
    if not models_path.exists():
        raise ModelLoadError(f"{PATH_MISSING}: models_path {models_path}")
    if models_path.is_file():
        if models_path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{NOT_DIRECTORY_NOR_GGUF}: models_path {models_path} is a file without the .gguf "
                                 "extension; point models_path at an exported model directory or a .gguf file")
        m = _SPLIT.match(models_path.name)
        if m is not None and int(m.group("part")) != 1:
            first = split_parts(models_path)[0]
            raise ModelLoadError(f"models_path {models_path} is part {int(m.group('part'))} of a split GGUF model; "
                                 f"point it at the first part, {first.name}")
        return models_path
    if (models_path / "openvino_model.xml").is_file() or (models_path / "openvino_language_model.xml").is_file():
        return None
    ggufs = sorted(p for p in models_path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    models = [p for p in ggufs if (m := _SPLIT.match(p.name)) is None or int(m.group("part")) == 1]
    if not ggufs:
        return None
    if len(models) != 1:
        raise ModelLoadError(f"{models_path} holds {len(models)} GGUF models ({', '.join(p.name for p in models)}"
                             f"{'; the first part of a split model is missing' if not models else ''}); point "
                             "models_path at one .gguf file")
    return models[0]


def check_servable(path: pathlib.Path) -> GGUFHeader:
    """The header of the GGUF model at ``path`` (first part of a split one), once every part is there and
    openvino_genai can build the model and its tokenizer; ModelLoadError with the reason otherwise."""
    parts = split_parts(path)
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise ModelLoadError(f"{path}: parts of the split GGUF model are missing: {', '.join(missing)}; download "
                             "them beside the first part (--pull --gguf_filename with the first part's name fetches "
                             "all of them)")
    header = read_header(path)
    for part in parts[1:]:
        header.tensors.update(read_header(part).tensors)
    arch = header.architecture
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{path}: GGUF architecture {arch or '(none)'!r} is not supported by openvino_genai's "
                             f"GGUF reader (it builds {', '.join(ARCHITECTURES)}); export the original model to "
                             "OpenVINO IR instead (optimum-cli export openvino, or --pull without --gguf_filename)")
    tokenizer = header.metadata.get("tokenizer.ggml.model")
    if tokenizer != "gpt2":
        raise ModelLoadError(f"{path}: GGUF tokenizer {tokenizer!r} (tokenizer.ggml.model) is not supported: "
                             "openvino_genai reads only byte-level BPE tokenizers ('gpt2': Llama 3, Qwen2/2.5/3) "
                             "from GGUF; SentencePiece ('llama': Llama 2, Mistral) models need an OpenVINO IR export")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        if not isinstance(header.metadata.get(key), list):
            raise ModelLoadError(f"{path}: the GGUF has no {key}; openvino_genai builds the tokenizer from it")
    unsupported = sorted((name, kind) for name, (kind, _) in header.tensors.items()
                         if _LINEAR.match(name) and kind not in LINEAR_TYPES)
    if unsupported:
        kinds = sorted({kind for _, kind in unsupported})
        raise ModelLoadError(f"{path}: {len(unsupported)} linear layers are {'/'.join(kinds)} (first: "
                             f"{unsupported[0][0]}); openvino_genai builds linear layers from "
                             f"{', '.join(LINEAR_TYPES)} GGUF tensors only; take another quantization of the model "
                             "(Q4_K_M, Q4_0, Q8_0 or F16)")
    return header


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet reversed: the printable character standing for each byte -> the byte
    (openai/gpt-2 encoder.py bytes_to_unicode; openvino_genai gguf_tokenizer.cpp unicode_to_bytes)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_DECODER = _byte_decoder()


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level BPE token stands for; a token with a character outside the byte alphabet (an added
    token such as ``<think>`` written with a space or non-Latin letters) stands for its own UTF-8, as
    openvino_genai's GGUF tokenizer reads it."""
    try:
        return bytes(_BYTE_DECODER[c] for c in token)
    except KeyError:
        return token.encode("utf-8", errors="surrogateescape")


def token_byte_table(header: GGUFHeader) -> list[bytes]:
    """Raw bytes of every token id, as the detokenizer needs them: control tokens (<|im_end|>, ...) decode to
    b"" as in the IR path; ids past the token list (padded embedding rows) too."""
    tokens = header.metadata["tokenizer.ggml.tokens"]
    types = header.metadata.get("tokenizer.ggml.token_type") or []
    table = [b"" if i < len(types) and types[i] == CONTROL_TOKEN else token_bytes(token)
             for i, token in enumerate(tokens)]
    embedding = header.tensors.get("token_embd.weight")
    rows = embedding[1][-1] if embedding and embedding[1] else 0  # ggml order: [hidden, vocabulary]
    return table + [b""] * max(0, rows - len(table))
