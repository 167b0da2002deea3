"""The range writer twins: same results, any buffer type, clear errors."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from ovms import _native
from tests.twins import PURE_RUN, expected_module, native_built, twin_params

TWINS = twin_params("rangewrite")


@pytest.fixture(params=TWINS)
def writer(request):
    return _native.load("rangewrite", pure=request.param)


def test_native_build_loaded():
    """Guard: the engine gets the twin this run expects: the compiled one, unless OVMS_NO_EXTENSIONS=1 asked for
    the pure one."""
    if not PURE_RUN:
        assert native_built("rangewrite"), "ovms/_native/rangewrite_c is not built: run `make build`"
    assert _native.load("rangewrite").__name__ == expected_module("rangewrite")


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 5000), st.binary(min_size=0, max_size=700)), max_size=12),
       kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))
@pytest.mark.parametrize("pure", TWINS)
def test_writes_land_at_their_offsets(tmp_path_factory, pure, writes, kind):
    writer = _native.load("rangewrite", pure=pure)
    path = tmp_path_factory.mktemp("rw") / "f"
    expected = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        for offset, data in writes:
            buf = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](data)
            assert writer.write_at(fd, offset, buf) == len(data)
            if data:
                if len(expected) < offset + len(data):
                    expected += b"\0" * (offset + len(data) - len(expected))
                expected[offset:offset + len(data)] = data
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(expected)


def test_twins_agree_on_a_large_buffer(tmp_path):
    data = os.urandom(3 << 20)
    outs = []
    for pure in [p.values[0] for p in TWINS]:
        w = _native.load("rangewrite", pure=pure)
        p = tmp_path / f"{pure}.bin"
        fd = os.open(p, os.O_RDWR | os.O_CREAT)
        try:
            w.write_at(fd, 1 << 20, memoryview(data)[1:])
            w.write_at(fd, 0, data[:1])
        finally:
            os.close(fd)
        outs.append(p.read_bytes())
    assert all(out == outs[0] for out in outs)
    assert outs[0][:1] == data[:1] and outs[0][1 << 20:] == data[1:]


def test_errors_are_clear(writer, tmp_path):
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(ValueError, match="negative offset"):
            writer.write_at(fd, -1, b"x")
        with pytest.raises(TypeError):
            writer.write_at(fd, 0, "text is not a buffer")
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="invalid file descriptor"):
        writer.write_at(-1, 0, b"x")
    with pytest.raises(OSError):
        writer.write_at(fd, 0, b"x")  # closed
    ro = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            writer.write_at(ro, 0, b"x")
        assert info.value.errno is not None
    finally:
        os.close(ro)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=10),
       offset=st.integers(0, 3000), capacity=st.integers(1, 2048), flush_at=st.integers(0, 10))
@pytest.mark.parametrize("pure", TWINS)
def test_sink_writes_any_chunking_at_its_offset(tmp_path_factory, pure, data, cuts, offset, capacity, flush_at):
    """However libcurl splits the body, the file holds it at ``offset``; ``flushed`` never exceeds the disk."""
    m = _native.load("rangewrite", pure=pure)
    path = tmp_path_factory.mktemp("sink") / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        sink = m.RangeSink(fd, offset, len(data), capacity, writeback=True)
        bounds = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
        for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
            assert sink.write(memoryview(data)[a:b]) is None
            assert sink.received == b and sink.flushed <= sink.received
            assert os.fstat(fd).st_size >= (offset + sink.flushed if sink.flushed else 0)
            if i == flush_at:
                sink.flush()
                assert sink.flushed == sink.received
        sink.flush()
        assert (sink.flushed, sink.received, sink.overflow, sink.error) == (len(data), len(data), False, 0)
    finally:
        os.close(fd)
    on_disk = path.read_bytes()
    assert on_disk[offset:] == data
    assert on_disk[:offset] == b"\0" * offset if data else True


@pytest.mark.parametrize("pure", TWINS)
def test_sink_modes_and_limits(tmp_path, pure):
    m = _native.load("rangewrite", pure=pure)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        sink = m.RangeSink(fd, 0, 10, 4)
        assert sink.write(b"0123456") is None
        assert sink.write(b"7890") == 0 and sink.overflow  # more than the range: abort
        sink.flush()
        assert sink.flushed == 7
        sink.mode = m.MODE_DISCARD
        assert sink.write(b"redirect body") is None and sink.received == 7
        sink.mode = m.MODE_CAPTURE
        assert sink.write(b"x" * 5000) is None and sink.captured == b"x" * m.CAPTURE_BYTES
        sink.mode = m.MODE_ABORT
        assert sink.write(b"y") == 0
        sink.reset(100, 3)
        sink.mode = m.MODE_BODY
        assert sink.write(b"abc") is None and sink.flush() == 3
        with pytest.raises(ValueError):
            m.RangeSink(fd, -1, 3)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes()[:7] == b"0123456"
    assert (tmp_path / "f").read_bytes()[100:] == b"abc"
    ro = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        sink = m.RangeSink(ro, 0, 10, 2)
        assert sink.write(b"abcd") == 0  # the block write failed: abort, errno kept
        assert sink.error != 0
        with pytest.raises(OSError):
            sink.flush()
    finally:
        os.close(ro)
