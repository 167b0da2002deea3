"""An incremental JSON reader that writes the value back in canonical form while it is still arriving.

Canonical means what ``json.dumps(json.loads(text), ensure_ascii=False)`` gives: ``", "`` and ``": "``
separators, numbers as Python prints them (``1E2`` -> ``100.0``), strings with only the escapes ``json.dumps``
writes (``"\\u00e9"`` -> ``"é"``). Streamed tool calls use it so that their argument fragments, concatenated,
equal the arguments string of the non-streamed answer (``ovms/genai/parsers/`` re-serialises with
``json.dumps``). It accepts and rejects what ``json.JSONDecoder().raw_decode`` does for an object or an array,
including ``NaN``/``Infinity`` and lone surrogate escapes; tests/genai/test_tool_call_stream.py checks both.

A decision never depends on where the text was split: a number or literal is written when the character after
it arrives, an escape when it is complete, a high surrogate escape when it is known whether a low one follows.
"""
from __future__ import annotations

import json
import re

# Event kinds of a reader in members mode (one JSON object whose members are reported one by one).
KEY = "key"  # a member name is complete: (KEY, name)
PIECE = "piece"  # canonical text of the current member's value (a number, literal, object or array)
CHARS = "chars"  # decoded characters of the current member's value when it is a string; ("", "") opens it
END = "end"  # the current member's value is complete

_JSON_SPACE = " \t\n\r"  # json's own whitespace (json.decoder.WHITESPACE), narrower than str.isspace
_SCALAR_START = frozenset("-0123456789tfnNI")  # numbers, true, false, null, NaN, Infinity, -Infinity
_SCALAR_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')

# What the reader expects next.
_VALUE, _FIRST_KEY, _KEY, _COLON, _NEXT, _FIRST_ITEM, _STRING, _SCALAR, _DONE = range(9)


class JsonStreamError(ValueError):
    """The text is not JSON; ``position`` is the index, in the text given to ``feed``, of the offending character."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


def _escaped(text: str) -> str:
    """``text`` as ``json.dumps(..., ensure_ascii=False)`` writes it inside the quotes."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


class CanonicalJsonReader:
    """Reads one JSON object or array, a piece at a time, into ``events`` (take them with ``take_events``);
    ``done`` says the value is complete.

    Plain mode: ``(PIECE, text)`` events whose concatenation is the canonical text of the whole value.
    Members mode (``members=True``): the value must be an object, and its members are reported as
    ``KEY``, then ``PIECE`` or ``CHARS`` pieces, then ``END``, without the object's own braces and separators.
    """

    __slots__ = ("events", "done", "_members", "_stack", "_state", "_in_key", "_key", "_escape", "_high",
                 "_token", "_consumed", "_base", "_pending_from")

    def __init__(self, *, members: bool = False) -> None:
        self.events: list[tuple[str, str]] = []
        self.done = False
        self._members = members
        self._stack: list[str] = []  # "{" or "[" per open container
        self._state = _VALUE
        self._in_key = False  # the string being read is a member name
        self._key: list[str] = []  # the members object's member name being read
        self._escape = ""  # an escape sequence being read, from its backslash
        self._high: str | None = None  # a high surrogate escape waiting to see whether a low one follows
        self._token = ""  # a number or literal being read
        self._consumed = 0  # characters read so far, over all feeds
        self._base = 0  # self._base + i: the position, over all feeds, of text[i] in the current feed
        self._pending_from: int | None = None  # where the token, escape or surrogate pair being read began

    @property
    def pending_chars(self) -> int:
        """How many of the last characters read are not written yet (an unfinished number, literal or escape)."""
        return 0 if self._pending_from is None else self._consumed - self._pending_from

    def take_events(self) -> list[tuple[str, str]]:
        events, self.events = self.events, []
        return events

    def feed(self, text: str) -> int:
        """Read ``text`` until the value ends; returns the index after the last character read (``len(text)``
        unless the value ended inside ``text``).

        Raises ``JsonStreamError`` at the first character that cannot continue a JSON value.
        """
        self._base = self._consumed
        try:
            end = self._read(text, 0)
        except JsonStreamError as exc:  # the characters before the offending one count as read
            self._consumed = self._base + exc.position
            raise
        self._consumed = self._base + end
        return end

    # ---- the reading loop ----------------------------------------------------------------------------------

    def _read(self, text: str, i: int) -> int:  # noqa: C901 - one state machine, easier to read in one place
        n = len(text)
        while i < n and not self.done:
            state = self._state
            c = text[i]
            if state == _STRING:
                if self._escape:
                    i = self._read_escape(text, i)
                    continue
                match = _PLAIN.match(text, i)
                if match is not None:
                    self._flush_high()
                    self._string_chars(match.group())
                    i = match.end()
                elif c == '"':
                    self._flush_high()
                    self._end_string()
                    i += 1
                elif c == "\\":
                    if self._high is None:
                        self._pending_from = self._base + i
                    self._escape = "\\"
                    i += 1
                else:
                    raise JsonStreamError(f"control character U+{ord(c):04X} inside a string (JSON needs it "
                                          f"escaped)", i)
                continue
            if state == _SCALAR:
                if c in _SCALAR_CHARS:
                    self._token += c
                    i += 1
                else:
                    self._end_scalar(i)
                continue
            if c in _JSON_SPACE:
                i += 1
                continue
            if state == _VALUE or state == _FIRST_ITEM:
                if c == "]" and state == _FIRST_ITEM:
                    self._close("]")
                else:
                    self._start_value(c, i)
            elif state == _FIRST_KEY or state == _KEY:
                if c == '"':
                    self._start_string(key=True)
                elif c == "}" and state == _FIRST_KEY:
                    self._close("}")
                else:
                    raise JsonStreamError(f"expected a member name in double quotes, found {c!r}", i)
            elif state == _COLON:
                if c != ":":
                    raise JsonStreamError(f"expected ':' after a member name, found {c!r}", i)
                if not self._own_syntax():
                    self._out(": ")
                self._state = _VALUE
            elif state == _NEXT:
                kind = self._stack[-1]
                closer = "}" if kind == "{" else "]"
                if c == ",":
                    if not self._own_syntax():
                        self._out(", ")
                    self._state = _KEY if kind == "{" else _VALUE
                elif c == closer:
                    self._close(closer)
                else:
                    where = "an object member" if kind == "{" else "an array item"
                    raise JsonStreamError(f"expected ',' or {closer!r} after {where}, found {c!r}", i)
            i += 1
        return i

    # ---- values ----------------------------------------------------------------------------------------------

    def _start_value(self, c: str, i: int) -> None:
        if self._members and not self._stack and c != "{":
            raise JsonStreamError(f"expected a JSON object, found {c!r}", i)
        if not self._stack and c not in "{[":
            raise JsonStreamError(f"expected a JSON object or array, found {c!r}", i)
        if c == "{" or c == "[":
            if not (self._members and not self._stack):  # the members object's own brace is not written
                self._out(c)
            self._stack.append(c)
            self._state = _FIRST_KEY if c == "{" else _FIRST_ITEM
        elif c == '"':
            self._start_string(key=False)
        elif c in _SCALAR_START:
            self._token = c
            self._pending_from = self._base + i
            self._state = _SCALAR
        else:
            raise JsonStreamError(f"expected a JSON value, found {c!r}", i)

    def _end_scalar(self, i: int) -> None:
        token, self._token = self._token, ""
        try:
            value = json.loads(token)
        except ValueError:  # JSONDecodeError, or an integer past sys.get_int_max_str_digits()
            raise JsonStreamError(f"{token!r} is not a JSON number or literal", i) from None
        self._pending_from = None
        self._out(json.dumps(value))
        self._value_done()

    def _close(self, closer: str) -> None:
        if not self._own_syntax():
            self._out(closer)
        self._stack.pop()
        self._value_done()

    def _value_done(self) -> None:
        if not self._stack:
            self.done = True
            self._state = _DONE
            return
        self._state = _NEXT
        if self._members and len(self._stack) == 1:
            self.events.append((END, ""))

    def _own_syntax(self) -> bool:
        """Whether the character being read is punctuation of the members object itself (not reported)."""
        return self._members and len(self._stack) == 1

    # ---- strings ---------------------------------------------------------------------------------------------

    def _start_string(self, *, key: bool) -> None:
        self._state = _STRING
        self._in_key = key
        if not self._own_syntax():
            self._out('"')
        elif key:
            self._key = []
        else:
            self.events.append((CHARS, ""))  # says "a string" even when it stays empty

    def _string_chars(self, chars: str) -> None:
        if not self._own_syntax():
            self._out(_escaped(chars))
        elif self._in_key:
            self._key.append(chars)
        else:
            self._append(CHARS, chars)

    def _end_string(self) -> None:
        own = self._own_syntax()
        if self._in_key:
            self._in_key = False
            if own:
                self.events.append((KEY, "".join(self._key)))
            else:
                self._out('"')
            self._state = _COLON
            return
        if not own:
            self._out('"')
        self._value_done()

    def _read_escape(self, text: str, i: int) -> int:
        c = text[i]
        sequence = self._escape + c
        if len(sequence) == 2:
            if c == "u":
                self._escape = sequence
                return i + 1
            decoded = _ESCAPES.get(c)
            if decoded is None:
                raise JsonStreamError(f"invalid escape {sequence} in a string", i)
            self._escape = ""
            self._flush_high()
            self._pending_from = None
            self._string_chars(decoded)
            return i + 1
        if c not in _HEX:
            raise JsonStreamError(f"invalid escape {sequence} in a string (\\u needs four hex digits)", i)
        if len(sequence) < 6:
            self._escape = sequence
            return i + 1
        self._escape = ""
        code = int(sequence[2:], 16)
        if self._high is not None:
            if 0xDC00 <= code <= 0xDFFF:  # a surrogate pair: json.loads joins it into one character
                pair = chr(0x10000 + ((ord(self._high) - 0xD800) << 10) + (code - 0xDC00))
                self._high = None
                self._pending_from = None
                self._string_chars(pair)
                return i + 1
            self._string_chars(self._high)
            self._high = None
        if 0xD800 <= code <= 0xDBFF:
            self._high = chr(code)
            self._pending_from = self._base + i - 5
        else:
            self._pending_from = None
            self._string_chars(chr(code))
        return i + 1

    def _flush_high(self) -> None:
        """A high surrogate escape not followed by a low one stays a lone surrogate, as in json.loads."""
        if self._high is not None:
            self._string_chars(self._high)
            self._high = None
            self._pending_from = None

    # ---- output ----------------------------------------------------------------------------------------------

    def _out(self, text: str) -> None:
        self._append(PIECE, text)

    def _append(self, kind: str, text: str) -> None:
        events = self.events
        if events and events[-1][0] == kind and kind != KEY and kind != END:
            events[-1] = (kind, events[-1][1] + text)
        else:
            events.append((kind, text))
