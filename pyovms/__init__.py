"""The ``pyovms`` module OVMS gives Python nodes (docs/python_support/reference.md): ``Tensor``.

``from pyovms import Tensor`` in a ``handler_path`` file works unchanged. The class is the compiled twin when it
was built (``ovms._native``; ``OVMS_NO_EXTENSIONS=1`` forces the pure one).
"""
from ovms._native import load as _load

Tensor = _load("pytensor").Tensor

__all__ = ["Tensor"]
