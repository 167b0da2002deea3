"""Content checks: the digest extended over a file's prefix as it downloads equals the digest of the whole file,
and what it guarantees (bytes are hashed once, from the file, after their write returned)."""
from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings, strategies as st

from conftest import assert_pulled, content
from hub_imitation import Faults
from ovms.pull.verify import PrefixDigest, check_file, digest_file

ALGORITHMS = ["sha256", "git-blob-sha1"]


def reference(algorithm: str, data: bytes) -> str:
    if algorithm == "sha256":
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 3 << 20), cuts=st.lists(st.integers(0, 3 << 20), max_size=8),
       algorithm=st.sampled_from(ALGORITHMS))
def test_prefix_digest_in_any_steps_is_the_file_digest(tmp_path_factory, size, cuts, algorithm):
    path = tmp_path_factory.mktemp("prefix") / "f.bin"
    data = content("prefix", size)
    path.write_bytes(data)
    digest = PrefixDigest(path, algorithm, size)
    for i, end in enumerate(cuts):  # any order: a step backwards, or beyond the size, does no harm
        digest.advance(end)
        assert digest.hashed == max(min(c, size) for c in cuts[:i + 1])
    assert digest.finish() == reference(algorithm, data) == digest_file(path, algorithm, size)
    assert digest.before_final == min(max(cuts, default=0), size)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_wrong_byte_in_the_part_not_yet_hashed_is_caught(tmp_path, algorithm):
    path = tmp_path / "f.bin"
    data = bytearray(content("tail", 5 << 20))
    path.write_bytes(data)
    digest = PrefixDigest(path, algorithm, len(data))
    digest.advance(2 << 20)
    expected = reference(algorithm, bytes(data))
    data[4 << 20] ^= 0xFF
    path.write_bytes(data)
    problem = check_file(path, len(data), algorithm, expected, prefix=digest)
    assert problem is not None and problem.startswith(f"{algorithm} ") and problem.endswith(f"expected {expected}")


def test_bytes_changed_behind_the_digest_are_not_read_again(tmp_path):
    """The guarantee, as huggingface_hub's in-flight hashing gives it: each byte is hashed once, as the file held
    it after its write returned. A change behind the digest (another process, a power cut's lost page) is not seen
    by this check; a power cut is caught by the re-check of every file that the .lfswip marker forces on the next
    run, and a resumed run starts its digest at byte 0."""
    path = tmp_path / "f.bin"
    data = bytearray(content("behind", 3 << 20))
    path.write_bytes(data)
    digest = PrefixDigest(path, "sha256", len(data))
    digest.advance(2 << 20)
    expected = reference("sha256", bytes(data))
    data[100] ^= 0xFF
    path.write_bytes(data)
    assert check_file(path, len(data), "sha256", expected, prefix=digest) is None
    assert check_file(path, len(data), "sha256", expected) is not None  # a fresh read sees it


def test_a_file_shorter_than_the_digest_expects_is_a_problem_not_a_crash(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    digest = PrefixDigest(path, "sha256", 2000)
    with pytest.raises(ValueError, match="ends at 1000 bytes, expected 2000"):
        digest.advance(2000)
    assert digest.hashed == 1000  # what was read stays hashed, consistently


REPO = "OpenVINO/hashed-ov"


def test_a_large_file_is_hashed_while_it_downloads(hub, pull, big_files):
    # 24 MiB in two ranges of 12 MiB at about 4 MB/s each: the first range's bytes are hashed while the rest
    # arrives, and the final check hashes only what is left.
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "openvino_model.bin": big_files["kill24m.bin"],
             "openvino_model.xml": content("hx", 5_000)}
    hub.add_repo(REPO, files)
    hub.set_faults(REPO, "openvino_model.bin", Faults(throttle_bps=4_000_000, times=10**6))
    run = pull(REPO, "--task", "text_generation", "--log_level", "DEBUG", OVMS_PULL_SEGMENT_BYTES=str(16 << 20))
    assert run.code == 0, run.output
    found = re.search(r"openvino_model\.bin verified \(sha256; ([0-9.]+) of 24\.0 MiB hashed during the download\)",
                      run.output)
    assert found, run.output
    assert float(found.group(1)) >= 8, run.output
    assert_pulled(pull.models / REPO, files)


def test_a_corrupt_range_is_caught_and_fetched_again(hub, pull, big_files):
    # The byte flipped by the server lands in the first range, which is hashed while the second still downloads.
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "openvino_model.bin": big_files["kill24m.bin"]}
    hub.add_repo(REPO, files)
    hub.set_faults(REPO, "openvino_model.bin", Faults(throttle_bps=8_000_000, flip_at=1 << 20, times=2))
    run = pull(REPO, "--task", "text_generation", OVMS_PULL_SEGMENT_BYTES=str(16 << 20))
    assert run.code == 0, run.output
    assert "openvino_model.bin failed verification (sha256 " in run.output, run.output
    assert_pulled(pull.models / REPO, files)
