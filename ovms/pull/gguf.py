"""``--gguf_filename``: which files of a GGUF repository to fetch, including every part of a split model.

llama.cpp names split models ``<name>-00001-of-0000N.gguf`` ... ``<name>-0000N-of-0000N.gguf``; asking for the
first part (as OVMS documents) fetches them all.
"""
from __future__ import annotations

import re

from ovms.pull.errors import RepoNotFoundError, UsageError
from ovms.pull.hub import RemoteFile

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")


def check_filename(filename: str, task: str | None) -> None:
    if not filename.lower().endswith(".gguf"):
        raise UsageError(f"--gguf_filename {filename!r} does not end with .gguf.",
                         remedy="Pass the exact GGUF file name from the repository, e.g. "
                                "--gguf_filename Llama-3.2-1B-Instruct-Q4_K_M.gguf.")
    if task not in (None, "text_generation"):
        raise UsageError("GGUF format model is only supported with --task text_generation.",
                         remedy="Drop --gguf_filename or use --task text_generation.")


def part_names(filename: str) -> list[str]:
    """All file names a GGUF request stands for (one, or every part of a split model)."""
    m = _SPLIT.match(filename)
    if not m:
        return [filename]
    count = int(m.group("count"))
    return [f"{m.group('stem')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def select(files: list[RemoteFile], filename: str, repo_id: str) -> list[RemoteFile]:
    by_path = {f.path: f for f in files}
    wanted = part_names(filename)
    missing = [name for name in wanted if name not in by_path]
    if missing:
        available = sorted(p for p in by_path if p.lower().endswith(".gguf"))
        raise RepoNotFoundError(
            f"{', '.join(missing)} is not in {repo_id}.",
            remedy="GGUF files in this repository: " + (", ".join(available[:20]) or "none") +
                   ("..." if len(available) > 20 else "") + ". Pass one of them as --gguf_filename.")
    return [by_path[name] for name in wanted]
