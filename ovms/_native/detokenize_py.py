"""Incremental detokenization for streaming (the readable twin of ``detokenize_c``).

Each token id maps to its raw bytes (``token_bytes``, built once per tokenizer). ``push`` appends a token's
bytes and returns the text that is final: complete UTF-8 characters that cannot be the start of a stop
string. Work per token is bounded by the longest stop string and 3 bytes of incomplete UTF-8, never by the
length of the sequence (no re-decoding). Invariant (tests/genai/test_detokenize.py): the concatenated
results of ``push`` and ``finish`` equal ``b"".join(token_bytes[t] for t in ids).decode("utf-8", "replace")``
truncated at the first stop string.
"""
from __future__ import annotations

from typing import Sequence


def _incomplete_tail(data: bytes | bytearray) -> int:
    """How many trailing bytes start a UTF-8 sequence that is not complete yet (0 to 3)."""
    n = len(data)
    for back in range(1, min(4, n + 1)):
        byte = data[n - back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII)
            if byte >= 0xF0:
                need = 4
            elif byte >= 0xE0:
                need = 3
            elif byte >= 0xC0:
                need = 2
            else:
                return 0
            return back if back < need else 0
    return 0


class Vocabulary:
    """The raw bytes of every token id; built once per tokenizer, shared by every stream."""

    __slots__ = ("table",)

    def __init__(self, token_bytes: Sequence[bytes]) -> None:
        self.table = tuple(bytes(piece) for piece in token_bytes)

    def __len__(self) -> int:
        return len(self.table)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a piece of a UTF-8 character for byte-fallback tokens)."""
        if not 0 <= token_id < len(self.table):
            raise IndexError(f"token id {token_id} is outside the vocabulary (size {len(self.table)})")
        return self.table[token_id]


class Detokenizer:
    """Streaming detokenizer of one sequence."""

    __slots__ = ("_table", "_stops", "_include_stop", "_pending", "_held", "stopped", "_max_stop")

    def __init__(self, vocabulary: "Vocabulary | Sequence[bytes]", stop: Sequence[str] = (), *,
                 include_stop: bool = False) -> None:
        """``vocabulary``: a ``Vocabulary`` (shared, no per-stream cost) or the token bytes themselves."""
        self._table = vocabulary.table if isinstance(vocabulary, Vocabulary) else vocabulary
        self._stops = tuple(s for s in stop if s)
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._include_stop = include_stop
        self._pending = bytearray()
        self._held = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final (possibly empty)."""
        if self.stopped:
            return ""
        if not 0 <= token_id < len(self._table):
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {len(self._table)})")
        pending = self._pending
        pending += self._table[token_id]
        cut = len(pending) - _incomplete_tail(pending)
        if cut <= 0:
            return ""
        text = pending[:cut].decode("utf-8", "replace")
        del pending[:cut]
        return self._release(self._held + text)

    def push_many(self, token_ids: Sequence[int]) -> str:
        return "".join([self.push(t) for t in token_ids])

    def _release(self, text: str) -> str:
        if not self._stops:
            self._held = ""
            return text
        # A stop string may only start inside the last max_stop - 1 + new characters; search from there.
        first = -1
        found = ""
        for stop in self._stops:
            at = text.find(stop)
            if at >= 0 and (first < 0 or at < first):
                first, found = at, stop
        if first >= 0:
            self.stopped = True
            self._held = ""
            self._pending.clear()
            return text[:first + len(found)] if self._include_stop else text[:first]
        keep = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:length]):
                    keep = length
                    break
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def finish(self) -> str:
        """The generation ended: release what was held back (incomplete UTF-8 becomes U+FFFD)."""
        if self.stopped:
            return ""
        text = self._held + self._pending.decode("utf-8", "replace")
        self._held = ""
        self._pending.clear()
        return text
