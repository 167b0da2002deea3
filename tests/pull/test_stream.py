"""Large files written with O_DIRECT from the write pool, and hashed as they are written (issue 16's pull)."""
from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from conftest import assert_pulled, content
from hub_imitation import Faults
from ovms import _native
from ovms.pull.verify import HoldBudget, StreamDigest
from tests.twins import twin_params

TWINS = twin_params("rangewrite")
MIB = 1 << 20
REPO = "OpenVINO/stream-ov"


@pytest.fixture(scope="module")
def pool():
    with concurrent.futures.ThreadPoolExecutor(4) as p:
        yield p


def open_pair(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
    except OSError as exc:  # the test must not pass silently on a filesystem that takes no direct I/O
        os.close(fd)
        pytest.fail(f"{path.parent} does not take O_DIRECT ({exc}): these tests need a filesystem that does")
    return fd, direct


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=40_000), cuts=st.lists(st.integers(0, 40_000), max_size=12),
       offset=st.sampled_from([0, 4096, 8192 + 77, 123]), capacity=st.sampled_from([1, 1000, 4096, 9000, 20_000]),
       flush_at=st.integers(0, 12), pooled=st.booleans(), soon=st.booleans())
@pytest.mark.parametrize("pure", TWINS)
def test_direct_sink_writes_any_chunking(tmp_path_factory, pool, pure, data, cuts, offset, capacity, flush_at,
                                         pooled, soon):
    """Through a real O_DIRECT descriptor, with or without the pool: the file holds the body at ``offset``, the
    aligned middle went direct (so every direct write was aligned: this filesystem refuses others with EINVAL),
    and ``flushed`` never claims a byte whose write has not returned."""
    m = _native.load("rangewrite", pure=pure)
    path = tmp_path_factory.mktemp("direct") / "f"
    fd, direct = open_pair(path)
    digest = StreamDigest("sha256", offset + len(data), HoldBudget(1 << 30, 1 << 20))
    digest.offer(0, b"\0" * offset)  # the bytes before the range, as if another range had written them
    try:
        sink = m.RangeSink(fd, offset, len(data), capacity, direct_fd=direct, pool=pool if pooled else None,
                           digest=digest)
        bounds = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            assert sink.write(memoryview(data)[a:b]) is None
            assert sink.flushed <= sink.received == b
            if i == flush_at:
                if soon:
                    sink.flush_soon()
                else:
                    sink.flush()
                    assert sink.flushed == b
        last = sink.close()
        if last is not None:
            last.result()
        assert (sink.flushed, sink.error, sink.direct_refused) == (len(data), 0, False)
    finally:
        os.close(fd)
        os.close(direct)
    assert path.read_bytes()[offset:] == data
    # Writes are cut only at block ends (aligned) and at the one explicit flush: of 3 whole pages, one went direct.
    whole_pages = ((offset + len(data)) // 4096 - -(-offset // 4096))
    if whole_pages >= 3:
        assert sink.direct_bytes >= 4096
    assert sink.direct_bytes % 4096 == 0
    assert digest.finish(path) == (hashlib.sha256(b"\0" * offset + data).hexdigest(), 0)


@pytest.mark.parametrize("pure", TWINS)
def test_whole_pages_go_direct(tmp_path, pool, pure):
    m = _native.load("rangewrite", pure=pure)
    fd, direct = open_pair(tmp_path / "f")
    data = os.urandom(5 * MIB + 123)
    try:
        sink = m.RangeSink(fd, 4096 * 3 + 5, len(data), MIB, direct_fd=direct, pool=pool)
        for at in range(0, len(data), 16384):
            assert sink.write(data[at:at + 16384]) is None
        sink.close().result()
    finally:
        os.close(fd)
        os.close(direct)
    assert (tmp_path / "f").read_bytes()[4096 * 3 + 5:] == data
    # Only the head up to the first page boundary and the tail after the last one went through the page cache.
    assert len(data) - sink.direct_bytes < 2 * 4096, sink.direct_bytes


def test_a_refused_direct_write_goes_through_the_page_cache(tmp_path, monkeypatch):
    """A filesystem that refuses the alignment (EINVAL) gets every later block through the plain descriptor. Only
    the pure twin can be made to meet that here (ext4 takes 4 KiB-aligned direct writes)."""
    m = _native.load("rangewrite", pure=True)
    fd, direct = open_pair(tmp_path / "f")
    real = os.pwrite

    def refuse_direct(target, buf, offset):
        if target == direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(target, buf, offset)

    monkeypatch.setattr(m.os, "pwrite", refuse_direct)
    data = os.urandom(3 * 4096 * 4 + 99)
    try:
        sink = m.RangeSink(fd, 0, len(data), 4096 * 4, direct_fd=direct)
        assert sink.write(data) is None
        sink.flush()
    finally:
        os.close(fd)
        os.close(direct)
    assert (sink.direct_refused, sink.direct_fd, sink.direct_bytes, sink.error) == (True, -1, 0, 0)
    assert (tmp_path / "f").read_bytes() == data


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=30), seed=st.integers(0, 2**32),
       budget=st.sampled_from([0, 8192, 1 << 20]), keep=st.booleans(),
       algorithm=st.sampled_from(["sha256", "git-blob-sha1"]))
def test_stream_digest_in_any_order_equals_the_file(tmp_path_factory, sizes, seed, budget, keep, algorithm):
    """Blocks offered in any order, kept or copied within any budget: the digest equals the whole file's, and only
    what the prefix could not reach in memory is read back."""
    data = random.Random(seed).randbytes(sum(sizes))
    path = tmp_path_factory.mktemp("digest") / "f"
    path.write_bytes(data)
    blocks, at = [], 0
    for n in sizes:
        blocks.append((at, data[at:at + n]))
        at += n
    random.Random(seed + 1).shuffle(blocks)
    room = HoldBudget(budget, 5000)
    digest = StreamDigest(algorithm, len(data), room)
    for pos, block in blocks:
        digest.offer(pos, memoryview(block), keep=keep)
        assert room.held <= budget
    expected = hashlib.sha256(data) if algorithm == "sha256" else hashlib.sha1(b"blob %d\0" % len(data) + data)
    got, read_back = digest.finish(path, direct=True)
    assert got == expected.hexdigest()
    assert room.held == 0
    if budget >= 5000 * len(sizes):  # room for every block, copied (a pool buffer each) or kept as it is
        assert read_back == 0
    assert 0 <= read_back <= len(data)


def test_stream_digest_reads_everything_back_after_a_rewrite(tmp_path):
    data = os.urandom(20_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    digest = StreamDigest("sha256", len(data), HoldBudget(1 << 20, 1 << 16))
    digest.offer(0, data[:10_000])
    digest.offer(5_000, b"x" * 100)  # bytes behind the prefix written again: only the file can say what they are
    digest.offer(10_000, data[10_000:])
    assert digest.finish(path) == (hashlib.sha256(data).hexdigest(), len(data))
    restarted = StreamDigest("sha256", len(data), HoldBudget(1 << 20, 1 << 16))
    restarted.offer(0, b"garbage before a restart")
    restarted.discard()
    assert restarted.finish(path) == (hashlib.sha256(data).hexdigest(), len(data))


def test_a_new_large_file_is_fetched_in_ordered_stripes_and_never_read_back(hub, pull, big_files):
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "openvino_model.bin": big_files["kill24m.bin"],
             "openvino_model.xml": content("sx", 5_000)}
    hub.add_repo(REPO, files)
    run = pull(REPO, "--task", "text_generation", "--log_level", "DEBUG", OVMS_PULL_SEGMENT_BYTES=str(2 * MIB),
               OVMS_PULL_CONNECTIONS="3")
    assert run.code == 0, run.output
    assert "written with O_DIRECT" in run.output
    assert f"openvino_model.bin.lfs_part: {24 * MIB} of {24 * MIB} bytes hashed as they were written, 0 read back" \
        in run.output, run.output
    assert_pulled(pull.models / REPO, files)
    cdn = sorted((r["started"], int(r["range"].split("=")[1].split("-")[0])) for r in hub.requests
                 if r["origin"] == "cdn" and r["range"])
    starts = [start for _, start in cdn]
    assert sorted(starts) == [i * 2 * MIB for i in range(12)], starts  # 2 MiB stripes, each once
    # requested in file order: with 3 connections the server may see neighbours swapped, never further apart
    assert all(abs(start // (2 * MIB) - i) < 3 for i, start in enumerate(starts)), starts
    assert not list((pull.models / REPO).glob("*.lfs_part*"))


def test_direct_io_off_and_a_dropped_connection(hub, pull, big_files):
    """OVMS_PULL_DIRECT_IO=0 writes through the page cache, still hashing as it writes; a range retried after a
    dropped connection continues where its bytes on disk end, so the digest never has to read the file."""
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "openvino_model.bin": big_files["kill24m.bin"],
             "openvino_model.xml": content("sx", 5_000)}
    hub.add_repo(REPO, files)
    hub.set_faults(REPO, "openvino_model.bin", Faults(drop_after=MIB + 12345, times=1))
    run = pull(REPO, "--task", "text_generation", "--log_level", "DEBUG", OVMS_PULL_DIRECT_IO="0",
               OVMS_PULL_SEGMENT_BYTES=str(2 * MIB), GIT_LFS_RESUME_INTERVAL_SECONDS="0.05")
    assert run.code == 0, run.output
    assert "written with O_DIRECT" not in run.output
    assert "resuming from byte" in run.output, run.output
    assert "openvino_model.bin.lfs_part: 25165824 of 25165824 bytes hashed as they were written, 0 read back" \
        in run.output, run.output
    assert_pulled(pull.models / REPO, files)
    bad = pull(REPO, OVMS_PULL_DIRECT_IO="maybe")
    assert bad.code != 0 and "OVMS_PULL_DIRECT_IO='maybe' is neither on nor off" in bad.output, bad.output


def test_a_small_part_without_sidecar_is_fetched_again(hub, pull, big_files):
    """Files up to 1 MiB get no sidecar: a part left by a stopped run is never trusted, and is fetched whole."""
    files = {"config.json": b'{"architectures": ["LlamaForCausalLM"]}', "openvino_model.xml": content("sx", 300_000),
             "openvino_model.bin": big_files["model3m.bin"]}
    hub.add_repo(REPO, files)
    model_dir = pull.models / REPO
    model_dir.mkdir(parents=True)
    # What a run killed midway could leave: its marker, and a small part with no sidecar.
    model_dir.with_name(model_dir.name + ".lfswip").write_text(json.dumps({"source_model": REPO, "pid": 1}))
    (model_dir / "openvino_model.xml.lfs_part").write_bytes(b"\xff" * 300_000)
    run = pull(REPO, "--task", "text_generation")
    assert run.code == 0, run.output
    assert_pulled(model_dir, files)
    assert not list(model_dir.glob("*.lfs_part*"))
