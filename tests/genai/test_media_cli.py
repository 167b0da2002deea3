"""Where a VLM request's images may come from, and how large and of what format they may be, as operators set it
on the command line: `--allowed_local_media_path`, `--allowed_media_domains` (a host list, and `all`), on
`python -m ovms` serving the fixture VLM; images from files and from a local `http.server` on 127.0.0.1."""
from __future__ import annotations

import base64
import functools
import http.server
import io
import threading

import openai
import pytest
import requests

from tests.genai.test_vlm import QUESTION, VLM_DIR, data_url, png, user
from tests.test_cli import serve, stop, wait_ready

LIMIT = 20 << 20  # README: "20 MB encoded" per image (ovms.genai.media.MAX_IMAGE_BYTES)
CAT = png(7)


def padded(image: bytes, size: int) -> bytes:
    """A valid PNG of exactly ``size`` bytes: decoders stop at IEND, the bytes after it are ignored."""
    return image + b"\0" * (size - len(image))


class ImageHost:
    """`python -m http.server` on 127.0.0.1 in a thread, serving a directory; records the paths asked for."""

    def __init__(self, directory) -> None:
        paths = self.paths = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                paths.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler,
                                                                                         directory=str(directory)))
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    (d / "cat.png").write_bytes(CAT)
    (d / "at-limit.png").write_bytes(padded(CAT, LIMIT))
    (d / "over-limit.png").write_bytes(padded(CAT, LIMIT + 1))
    from PIL import Image

    for fmt in ("TIFF", "PPM"):  # formats Pillow decodes, but the server must not (README: a decoder whitelist)
        buffer = io.BytesIO()
        Image.open(io.BytesIO(CAT)).save(buffer, format=fmt)
        assert Image.open(io.BytesIO(buffer.getvalue())).format == fmt
        (d / f"cat.{fmt.lower()}").write_bytes(buffer.getvalue())
    return d


@pytest.fixture(scope="module")
def host(media):
    with ImageHost(media) as running:
        yield running


def vlm_server(tmp_path, *flags):
    process, _, rest_port = serve("--model_name", "vlm", "--model_path", str(VLM_DIR), "--task", "text_generation",
                                  "--cache_size", "1", *flags, log_path=tmp_path / "ovms.log")
    try:
        wait_ready(rest_port, process, timeout=120)
    except BaseException:
        stop(process)
        raise
    return process, f"http://127.0.0.1:{rest_port}/v3"


def answer(client, image_url: str) -> str:
    result = client.chat.completions.create(model="vlm", messages=[user(QUESTION, image_url)], max_tokens=12,
                                            temperature=0)
    return result.choices[0].message.content


def refused(url: str, image_url: str) -> str:
    r = requests.post(url + "/chat/completions", json={"model": "vlm", "max_tokens": 4,
                                                       "messages": [user(QUESTION, image_url)]}, timeout=60)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def test_local_path_and_listed_host(media, host, tmp_path):
    process, url = vlm_server(tmp_path, "--allowed_local_media_path", str(media),
                              "--allowed_media_domains", "127.0.0.1")
    try:
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120) as client:
            inline = answer(client, data_url(CAT))
            assert answer(client, str(media / "cat.png")) == inline
            assert answer(client, f"http://127.0.0.1:{host.port}/cat.png") == inline
            assert host.paths == ["/cat.png"]
            # a host not listed: refused, naming the flag, before any connection
            message = refused(url, f"http://localhost:{host.port}/cat.png")
            assert "allowed_media_domains" in message and "'localhost'" in message
            assert host.paths == ["/cat.png"]
            # 20 MB per image: the limit itself is accepted from every source, one byte more from none
            assert answer(client, str(media / "at-limit.png")) == inline
            assert answer(client, f"http://127.0.0.1:{host.port}/at-limit.png") == inline
            assert answer(client, "data:image/png;base64," + base64.b64encode(padded(CAT, LIMIT)).decode()) == inline
            assert f"larger than {LIMIT} bytes" in refused(url, str(media / "over-limit.png"))
            assert f"larger than {LIMIT} bytes" in refused(url, f"http://127.0.0.1:{host.port}/over-limit.png")
            assert f"larger than {LIMIT} bytes" in refused(
                url, "data:image/png;base64," + base64.b64encode(padded(CAT, LIMIT + 1)).decode())
            # decoders outside the whitelist: OVMS's message, from a file, a URL and inline alike
            for name in ("cat.tiff", "cat.ppm"):
                assert refused(url, str(media / name)) == "Invalid request - Image parsing failed", name
                assert refused(url, f"http://127.0.0.1:{host.port}/{name}") == \
                    "Invalid request - Image parsing failed", name
                inline_other = "data:image/png;base64," + base64.b64encode((media / name).read_bytes()).decode()
                assert refused(url, inline_other) == "Invalid request - Image parsing failed", name
            assert answer(client, str(media / "cat.png")) == inline  # and the server goes on
    finally:
        stop(process)


def test_all_media_domains_and_no_local_path(media, host, tmp_path):
    process, url = vlm_server(tmp_path, "--allowed_media_domains", "all")
    try:
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120) as client:
            inline = answer(client, data_url(CAT))
            before = len(host.paths)
            # a host named nowhere on the command line
            assert answer(client, f"http://localhost:{host.port}/cat.png") == inline
            assert answer(client, f"http://127.0.0.1:{host.port}/cat.png") == inline
            assert host.paths[before:] == ["/cat.png", "/cat.png"]
            message = refused(url, str(media / "cat.png"))
            assert "Loading images from local filesystem is disabled" in message
            assert "--allowed_local_media_path" in message
    finally:
        stop(process)


def test_without_media_flags_only_inline_images(media, host, tmp_path):
    process, url = vlm_server(tmp_path)
    try:
        before = len(host.paths)
        assert "--allowed_media_domains" in refused(url, f"http://127.0.0.1:{host.port}/cat.png")
        assert "--allowed_local_media_path" in refused(url, str(media / "cat.png"))
        assert host.paths[before:] == []
        with openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120) as client:
            assert answer(client, data_url(CAT))
    finally:
        stop(process)
