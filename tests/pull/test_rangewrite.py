"""The range writer twins: same results, any buffer type, clear errors."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from ovms import _native

TWINS = [pytest.param(True, id="pure"), pytest.param(False, id="native")]


@pytest.fixture(params=TWINS)
def writer(request):
    return _native.load("rangewrite", pure=request.param)


def test_native_build_loaded():
    """Guard: with extensions allowed, the compiled twin must be what the engine gets."""
    assert os.environ.get("OVMS_NO_EXTENSIONS") != "1", "this guard runs with extensions enabled"
    assert _native.load("rangewrite").__name__ == "ovms._native.rangewrite_c", (
        "ovms/_native/rangewrite_c is not built: run `python setup.py build_ext --inplace`")


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 5000), st.binary(min_size=0, max_size=700)), max_size=12),
       kind=st.sampled_from(["bytes", "bytearray", "memoryview"]))
@pytest.mark.parametrize("pure", [True, False], ids=["pure", "native"])
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
    for pure in (True, False):
        w = _native.load("rangewrite", pure=pure)
        p = tmp_path / f"{pure}.bin"
        fd = os.open(p, os.O_RDWR | os.O_CREAT)
        try:
            w.write_at(fd, 1 << 20, memoryview(data)[1:])
            w.write_at(fd, 0, data[:1])
        finally:
            os.close(fd)
        outs.append(p.read_bytes())
    assert outs[0] == outs[1]
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
