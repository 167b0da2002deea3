# cython: language_level=3, boundscheck=False, wraparound=False
"""Incremental detokenization for streaming (Cython twin of ``detokenize_py``; same behaviour, tested alike).

Token bytes are kept in one contiguous buffer with offsets, so ``push`` copies a token's bytes with memcpy and
scans at most 3 bytes back for an incomplete UTF-8 sequence.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memcpy, memmove


cdef inline int _incomplete_tail(const unsigned char* data, Py_ssize_t n) noexcept:
    cdef Py_ssize_t back
    cdef unsigned char byte
    cdef int need
    for back in range(1, min(4, n + 1)):
        byte = data[n - back]
        if byte & 0xC0 != 0x80:
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


cdef class Vocabulary:
    """The raw bytes of every token id in one buffer with offsets; built once per tokenizer, shared by streams."""

    cdef readonly bytes blob
    cdef object _offsets_obj
    cdef const long long[:] offsets
    cdef readonly Py_ssize_t size

    def __init__(self, token_bytes):
        import array
        offsets = array.array("q", [0])
        parts = []
        total = 0
        for piece in token_bytes:
            piece = bytes(piece)
            parts.append(piece)
            total += len(piece)
            offsets.append(total)
        self.blob = b"".join(parts)
        self._offsets_obj = offsets
        self.offsets = offsets
        self.size = len(parts)

    def __len__(self):
        return self.size

    def token_bytes(self, Py_ssize_t token_id):
        """The raw bytes of one token (a piece of a UTF-8 character for byte-fallback tokens)."""
        if not 0 <= token_id < self.size:
            raise IndexError(f"token id {token_id} is outside the vocabulary (size {self.size})")
        return self.blob[self.offsets[token_id]:self.offsets[token_id + 1]]


cdef class Detokenizer:
    """Streaming detokenizer of one sequence."""

    cdef Vocabulary _v
    cdef bytes _blob
    cdef Py_ssize_t _vocab
    cdef tuple _stops
    cdef bint _include_stop
    cdef unsigned char _pending[64]
    cdef Py_ssize_t _npending
    cdef bytearray _overflow
    cdef str _held
    cdef public bint stopped

    def __init__(self, vocabulary, stop=(), *, bint include_stop=False):
        """``vocabulary``: a ``Vocabulary`` (shared, no per-stream cost) or the token bytes themselves."""
        self._v = vocabulary if isinstance(vocabulary, Vocabulary) else Vocabulary(vocabulary)
        self._blob = self._v.blob
        self._vocab = self._v.size
        self._stops = tuple(s for s in stop if s)
        self._include_stop = include_stop
        self._npending = 0
        self._overflow = bytearray()
        self._held = ""
        self.stopped = False

    def push(self, long long token_id):
        """Add one token; return the text that became final (possibly empty)."""
        if self.stopped:
            return ""
        if token_id < 0 or token_id >= self._vocab:
            raise ValueError(f"token id {token_id} is outside the vocabulary (size {self._vocab})")
        cdef long long start = self._v.offsets[token_id]
        cdef long long length = self._v.offsets[token_id + 1] - start
        cdef const unsigned char* src = <const unsigned char*> (<char*> self._blob) + start
        cdef bytearray buf
        cdef Py_ssize_t cut, n
        cdef str text
        if self._npending + length <= 64:
            memcpy(&self._pending[self._npending], src, length)
            self._npending += length
            n = self._npending
            cut = n - _incomplete_tail(self._pending, n)
            if cut <= 0:
                return ""
            text = PyBytes_FromStringAndSize(<char*> self._pending, cut).decode("utf-8", "replace")
            memmove(self._pending, &self._pending[cut], n - cut)
            self._npending = n - cut
        else:  # a token longer than the inline buffer: take the slow path
            buf = bytearray(PyBytes_FromStringAndSize(<char*> self._pending, self._npending))
            buf += PyBytes_FromStringAndSize(<const char*> src, length)
            n = len(buf)
            cut = n - _incomplete_tail(buf, n)
            text = bytes(buf[:cut]).decode("utf-8", "replace")
            rest = bytes(buf[cut:])
            memcpy(self._pending, <const char*> rest, len(rest))
            self._npending = len(rest)
            if cut <= 0:
                return ""
        if not self._stops:
            if self._held:
                text = self._held + text
                self._held = ""
            return text
        return self._release(self._held + text)

    def push_many(self, token_ids):
        return "".join([self.push(t) for t in token_ids])

    cdef str _release(self, str text):
        cdef Py_ssize_t first = -1, at, keep = 0, length, size = len(text)
        cdef str found = "", stop
        for stop in self._stops:
            at = text.find(stop)
            if at >= 0 and (first < 0 or at < first):
                first = at
                found = stop
        if first >= 0:
            self.stopped = True
            self._held = ""
            self._npending = 0
            return text[:first + len(found)] if self._include_stop else text[:first]
        for stop in self._stops:
            length = min(len(stop) - 1, size)
            while length > keep:
                if text.endswith(stop[:length]):
                    keep = length
                    break
                length -= 1
        self._held = text[size - keep:] if keep else ""
        return text[:size - keep]

    def finish(self):
        """The generation ended: release what was held back (incomplete UTF-8 becomes U+FFFD)."""
        if self.stopped:
            return ""
        text = self._held + PyBytes_FromStringAndSize(<char*> self._pending, self._npending).decode("utf-8", "replace")
        self._held = ""
        self._npending = 0
        return text
