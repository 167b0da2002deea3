"""Where a pulled model and its in-flight state live on disk.

Layout, after OVMS (docs "Pull mode: Resuming an interrupted pull")::

    <model_repository_path>/<ORG>/<NAME>/             the model (final files only when complete)
    <model_repository_path>/<ORG>/<NAME>/<f>.lfs_part  bytes of a file in flight, written at offsets
    <model_repository_path>/<ORG>/<NAME>/<f>.lfs_part.ranges  which ranges of the part are on disk (JSON)
    <model_repository_path>/<ORG>/<NAME>.lfswip        marker: a pull of this repository is unfinished
    <model_repository_path>/<ORG>/<NAME>/.ovms_pull.json  completion record (commit + verified files)
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

from ovms.pull.errors import UnsafePathError, UsageError

PART_SUFFIX = ".lfs_part"
RANGES_SUFFIX = ".lfs_part.ranges"
MARKER_SUFFIX = ".lfswip"
RECORD_NAME = ".ovms_pull.json"

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_repo_id(source_model: str) -> str:
    """``ORG/NAME`` as the hub spells repository ids; anything else is a usage error."""
    if not _REPO_ID.match(source_model or "") or ".." in source_model:
        raise UsageError(f"--source_model {source_model!r} is not a Hugging Face repository id.",
                         remedy="Pass it as ORG/NAME, e.g. --source_model OpenVINO/Qwen3-8B-int4-ov.")
    return source_model


@dataclasses.dataclass(frozen=True, slots=True)
class ModelPaths:
    repository: pathlib.Path  # --model_repository_path
    source_model: str  # ORG/NAME
    directory: pathlib.Path | None = None  # where it goes instead of repository/ORG/NAME (a draft model)

    @property
    def model_dir(self) -> pathlib.Path:
        if self.directory is not None:
            return self.directory
        return self.repository.joinpath(*self.source_model.split("/"))

    @property
    def marker(self) -> pathlib.Path:
        return self.model_dir.with_name(self.model_dir.name + MARKER_SUFFIX)

    @property
    def record(self) -> pathlib.Path:
        return self.model_dir / RECORD_NAME


def safe_join(root: pathlib.Path, relative: str) -> pathlib.Path:
    """``root / relative`` for a name the hub sent; refuses names that would land outside ``root``."""
    bad = (not relative or relative.startswith(("/", "\\")) or "\\" in relative or "\0" in relative
           or re.match(r"^[A-Za-z]:", relative) is not None
           or any(part in ("", ".", "..") for part in relative.split("/"))
           or relative.endswith((PART_SUFFIX, RANGES_SUFFIX)) or relative == RECORD_NAME)
    target = root.joinpath(*relative.split("/")) if not bad else None
    if target is not None:
        try:
            target.resolve().relative_to(root.resolve())
        except ValueError:
            bad = True
    if bad:
        raise UnsafePathError(f"The hub listed a file named {relative!r}, which would be written outside "
                              f"{root} (or over pull state); refusing to download this repository.",
                              remedy="Check --source_model and HF_ENDPOINT: a genuine Hugging Face repository "
                                     "never lists such names. Report it to the repository owner.")
    return target


def draft_directory_name(draft_model: str) -> str:
    """The directory a --draft_source_model goes to, inside the main model's: ORG-NAME (OVMS's
    GraphExport::getDraftModelDirectoryName), which graph.pbtxt names as draft_models_path."""
    return draft_model.replace("/", "-")
