"""What can go wrong in a pull, each with the remedy a person needs at 3 a.m.

Every expected failure is a ``PullError``: the CLI prints ``str(error)`` (what happened, then what to do) and
exits with ``error.exit_code`` without a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 64  # OVMS_EX_USAGE (sysexits.h EX_USAGE), what the ovms binary returns for bad flags

RESUME_HINT = "Re-run the same command to resume; bytes already on disk are kept."


class PullError(Exception):
    """An expected failure of a pull. ``remedy`` says what the user should do next."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, remedy: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.message}\n{self.remedy}" if self.remedy else self.message


class UsageError(PullError):
    """The command line is wrong (exit 64, like the ovms binary)."""

    exit_code = EXIT_USAGE


class RepoNotFoundError(PullError):
    """The hub says the repository does not exist, or it is private and we have no access."""


class GatedRepoError(PullError):
    """The repository is gated: the user must accept its licence on the hub and use a token."""


class RevisionNotFoundError(PullError):
    """The repository exists but the requested revision (branch, tag or commit) does not."""


class NetworkError(PullError):
    """The hub or its CDN could not be reached, or kept failing after every retry."""


class DiskFullError(PullError):
    """Not enough free space for the files still to download."""


class VerificationError(PullError):
    """A file kept failing its size or hash check after every re-fetch."""


class UnsafePathError(PullError):
    """The hub listed a file name that would land outside the model directory."""


class InterruptedPull(PullError):
    """SIGINT or SIGTERM arrived; state on disk is consistent and the pull can be resumed."""


class ConversionError(PullError):
    """optimum-cli (or convert_tokenizer) is missing or failed."""
