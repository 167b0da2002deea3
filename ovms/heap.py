"""Keep the garbage collector's full collections off the loaded models' objects.

With an LLM loaded the server holds about 75,000 long-lived objects (tokenizer vocabularies, chat templates,
OpenVINO wrappers), and a full collection walked them all: 40-65 ms with the event loop stopped, measured as
time-to-first-token spikes of that size. After every load or unload, ``settle()`` collects once and moves what
survives into the permanent generation (``gc.freeze()``), where later collections do not look. Objects of a
model unloaded later are frozen too, so an unload first unfreezes everything: the next collection frees the
old model's cycles, and what is left is frozen again. Loads and unloads are rare; each costs one full
collection.
"""
from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("ovms.heap")


def settle() -> None:
    """Collect once and freeze what survives (call after the set of loaded servables changed)."""
    started = time.perf_counter()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    log.debug("heap settled: %d objects collected, %d frozen, %.1f ms", collected, gc.get_freeze_count(),
              (time.perf_counter() - started) * 1e3)
