"""The error both tensor codec twins raise, so callers need not know which one ran."""


class CodecError(ValueError):
    """Wire data does not match its declared datatype or shape; the message names what is wrong."""
