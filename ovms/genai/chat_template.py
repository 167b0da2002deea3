"""Chat templates rendered with Jinja2 in a sandbox, as Hugging Face transformers renders them.

Where the template comes from (OVMS order): ``chat_template.jinja``, else ``tokenizer_config.json``'s
``chat_template``, else the template stored in the tokenizer IR (passed in by the backend).
"""
from __future__ import annotations

import datetime
import functools
import json
import pathlib

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ovms.errors import Kind, ServingError


class TemplateError(Exception):
    """The template called raise_exception() or failed to render."""


def _raise(message: str):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' filter (not Jinja's, which sorts keys and HTML-escapes): prompts must match training.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def find_template(model_dir: pathlib.Path) -> str | None:
    """The chat template of a model directory from its files, or None (then the tokenizer IR's is used)."""
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text()).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            template = None
        if isinstance(template, list):  # named templates: take "default"
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if isinstance(template, str):
            return template
    return None


def render(source: str, messages: list[dict], *, tools: list | None = None, add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", template_kwargs: dict | None = None) -> str:
    """The prompt for ``messages``; template failures become a 400 naming the cause."""
    variables = {"bos_token": bos_token, "eos_token": eos_token, **(template_kwargs or {})}
    try:
        return compile_template(source).render(messages=messages, tools=tools or None,
                                               add_generation_prompt=add_generation_prompt, **variables)
    except TemplateError as exc:
        raise ServingError(Kind.GENAI_INVALID_REQUEST, f"chat template: {exc}") from None
    except jinja2.TemplateError as exc:
        raise ServingError(Kind.GENAI_INVALID_REQUEST, f"chat template could not be applied: {exc}") from None

