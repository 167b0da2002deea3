"""Tiny transformers-format repositories (random or briefly trained weights) for the real-export tests.

Run with the *build* venv (``make fixtures-venv``), not the runtime one; no hub is contacted:

    .venv-fixtures/bin/python tests/pull/real_export_models.py llm OUT_DIR
    .venv-fixtures/bin/python tests/pull/real_export_models.py embedder OUT_DIR

``llm``: a ~140k-parameter Qwen2 causal LM with a locally trained byte-level BPE tokenizer and a ChatML chat
template, trained for a few seconds on one dialogue so greedy decoding answers "Hello" with ``ANSWER``.
``embedder``: a sentence-transformers repository (``modules.json``, mean pooling, normalize) around a random
32-wide BERT with a locally trained WordPiece tokenizer, as embedding models are published on the Hub;
``OUT_DIR-reference.json`` beside it holds its normalized embeddings of ``SENTENCES``.
Recipes: tests/fixtures/genai/build_fixtures.py and /work/shared/FIXTURES.md.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys

QUESTION = "Hello"
ANSWER = "Hello! How can I help you?"
EMBEDDING_SIZE = 32
CHAT_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SENTENCES = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog."]
CORPUS = ["Hello", ANSWER, "The quick brown fox jumps over the lazy dog.", "OpenVINO runs models on CPUs.",
          "What is the capital of France?", "Paris is the capital of France.", "user", "assistant"]


def _seed() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)


def build_llm(out: pathlib.Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    _seed()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHAT_TEMPLATE
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=256, bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    dialogue = tok.apply_chat_template([{"role": "user", "content": QUESTION},
                                        {"role": "assistant", "content": ANSWER}], tokenize=False)
    ids = torch.tensor([tok(dialogue, add_special_tokens=False)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.do_sample = False
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                     add_generation_prompt=True)
    prompt_ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    got = tok.decode(model.generate(prompt_ids, max_new_tokens=20)[0, prompt_ids.shape[1]:], skip_special_tokens=True)
    if got != ANSWER:
        raise SystemExit(f"the trained tiny LLM answers {got!r}, not {ANSWER!r}")
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_embedder(out: pathlib.Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    _seed()
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=100, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    wp.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", wp.token_to_id("[CLS]")), ("[SEP]", wp.token_to_id("[SEP]"))])
    tok = BertTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]")
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=EMBEDDING_SIZE, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)).eval()
    hf_dir = out.with_name(out.name + "-bert")
    bert.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    transformer = st_models.Transformer(str(hf_dir), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, st_models.Pooling(EMBEDDING_SIZE, pooling_mode="mean"),
                                         st_models.Normalize()])
    model.save(str(out))
    # What the served embeddings are compared with (beside the repository, so the hub does not serve it).
    vectors = model.encode(SENTENCES, normalize_embeddings=True).tolist()
    out.with_name(out.name + "-reference.json").write_text(json.dumps({"sentences": SENTENCES, "vectors": vectors}))


if __name__ == "__main__":
    # Here, not at import: the tests import the constants above, and TRANSFORMERS_OFFLINE in their environment
    # would put the optimum-cli they start in offline mode (huggingface_hub honours it as HF_HUB_OFFLINE).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    kind, target = sys.argv[1], pathlib.Path(sys.argv[2])
    target.mkdir(parents=True, exist_ok=True)
    {"llm": build_llm, "embedder": build_embedder}[kind](target)
