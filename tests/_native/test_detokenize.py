"""Incremental detokenization: concatenated deltas == full decode, for both twins; the native build guard."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovms._native import is_native, load

try:
    load("detokenize", pure=False)
    HAVE_NATIVE = True
except ImportError:
    HAVE_NATIVE = False
NATIVE_ONLY = pytest.mark.skipif(not HAVE_NATIVE and os.environ.get("OVMS_NO_EXTENSIONS") == "1",
                                 reason="pure build (OVMS_NO_EXTENSIONS=1)")
TWINS = [pytest.param(True, id="pure"), pytest.param(False, id="native", marks=NATIVE_ONLY)]


def test_native_build_loaded():
    """A build with extensions must use them; only OVMS_NO_EXTENSIONS=1 allows the pure twin."""
    if os.environ.get("OVMS_NO_EXTENSIONS") == "1":
        assert not is_native("detokenize")
    else:
        assert HAVE_NATIVE, "ovms._native.detokenize_c did not import: run `make build`"
        assert is_native("detokenize")


def byte_fallback_vocab(texts: list[str]) -> list[bytes]:
    """A vocabulary like a byte-fallback tokenizer's: all 256 single bytes plus some multi-byte pieces."""
    pieces = [bytes([b]) for b in range(256)]
    pieces += [b"", b"Hello", b" world", "こん".encode(), "👋".encode()[:2], "👋".encode()[2:], b"\xe3\x81",
               "\u00e9".encode()]
    for text in texts:
        pieces.append(text.encode())
    return pieces


VOCAB = byte_fallback_vocab(["日本語", " stop", "END"])


def full_decode(ids, stop=(), include=False):
    text = b"".join(VOCAB[i] for i in ids).decode("utf-8", "replace")
    hits = [(text.find(s), s) for s in stop if s and text.find(s) >= 0]
    if hits:
        at, s = min(hits)
        return text[:at + len(s)] if include else text[:at]
    return text


def stream(detok, ids):
    return "".join(detok.push(i) for i in ids) + detok.finish()


def ids_of(text: str) -> list[int]:
    return list(text.encode())  # single-byte tokens: the hardest case for holding back UTF-8


@pytest.mark.parametrize("pure", TWINS)
def test_multibyte_held_until_complete(pure):
    module = load("detokenize", pure=pure)
    detok = module.Detokenizer(VOCAB)
    emoji = "👋".encode()
    assert [detok.push(b) for b in emoji] == ["", "", "", "👋"]
    assert detok.push(VOCAB.index("こん".encode())) == "こん"
    assert detok.finish() == ""


@pytest.mark.parametrize("pure", TWINS)
def test_stop_string_prefix_held_back_then_released(pure):
    module = load("detokenize", pure=pure)
    detok = module.Detokenizer(VOCAB, stop=["END"])
    assert detok.push(ord("a")) == "a"
    assert detok.push(ord("E")) == ""
    assert detok.push(ord("N")) == ""
    assert detok.push(ord("x")) == "ENx"
    assert detok.push(ord("E")) + detok.push(ord("N")) + detok.push(ord("D")) == ""
    assert detok.stopped and detok.push(ord("z")) == "" and detok.finish() == ""


@pytest.mark.parametrize("pure", TWINS)
def test_include_stop_and_truncated_utf8_at_end(pure):
    module = load("detokenize", pure=pure)
    detok = module.Detokenizer(VOCAB, stop=[" stop"], include_stop=True)
    assert stream(detok, ids_of("go stop now")) == "go stop"
    detok = module.Detokenizer(VOCAB)
    assert stream(detok, [ord("a"), 0xE3, 0x81]) == "a\ufffd"


@pytest.mark.parametrize("pure", TWINS)
def test_out_of_vocabulary_id_is_a_clear_error(pure):
    module = load("detokenize", pure=pure)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        module.Detokenizer(VOCAB).push(len(VOCAB))


@pytest.mark.parametrize("pure", TWINS)
@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.integers(0, len(VOCAB) - 1), max_size=60),
       stop=st.lists(st.sampled_from(["END", " stop", "日本", "ab", "👋"]), max_size=3),
       include=st.booleans())
def test_concatenated_deltas_equal_full_decode(pure, ids, stop, include):
    module = load("detokenize", pure=pure)
    assert stream(module.Detokenizer(VOCAB, stop, include_stop=include), ids) == full_decode(ids, stop, include)


@pytest.mark.parametrize("pure", TWINS)
@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.lists(st.integers(0, len(VOCAB) - 1), max_size=30), min_size=1, max_size=4),
       stop=st.lists(st.sampled_from(["END", "日本", "👋"]), max_size=2))
def test_streams_sharing_one_vocabulary_are_independent(pure, ids, stop):
    """The servable builds one Vocabulary per model; interleaved streams on it decode as if alone."""
    module = load("detokenize", pure=pure)
    vocabulary = module.Vocabulary(VOCAB)
    assert len(vocabulary) == len(VOCAB)
    detoks = [module.Detokenizer(vocabulary, stop) for _ in ids]
    outs = ["" for _ in ids]
    for step in range(max(len(seq) for seq in ids)):
        for n, seq in enumerate(ids):
            if step < len(seq):
                outs[n] += detoks[n].push(seq[step])
    outs = [out + detok.finish() for out, detok in zip(outs, detoks)]
    assert outs == [full_decode(seq, stop, False) for seq in ids]


@NATIVE_ONLY
@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("aé日本語👋 EN D")), max_size=40))
def test_native_equals_pure_on_text(text):
    ids = ids_of(text)
    pure = load("detokenize", pure=True).Detokenizer(VOCAB, ["END"])
    native = load("detokenize", pure=False).Detokenizer(VOCAB, ["END"])
    assert [pure.push(i) for i in ids] == [native.push(i) for i in ids]
    assert pure.finish() == native.finish()


@pytest.mark.parametrize("pure", TWINS)
def test_vocabulary_hands_out_each_tokens_raw_bytes(pure):
    """The logprobs' token texts come from here: every id's own bytes, partial UTF-8 pieces kept raw."""
    module = load("detokenize", pure=pure)
    vocabulary = module.Vocabulary(VOCAB)
    assert [vocabulary.token_bytes(i) for i in range(len(VOCAB))] == [bytes(piece) for piece in VOCAB]
    for bad in (-1, len(VOCAB)):
        with pytest.raises(IndexError, match=f"token id {bad} is outside the vocabulary"):
            vocabulary.token_bytes(bad)
