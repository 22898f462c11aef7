"""The languages hotpot_km prepares besides ipykernel's Python, one small module each.

Each is a :class:`~hotpot_km.languages.Preparation` whose handout goes through a file
(see :mod:`hotpot_km.langs.handout`); they are registered in the ``hotpot_km.languages``
entry point group like any third party's language (docs/languages.md).
"""

from __future__ import annotations

from .bash import BASH
from .octave import OCTAVE
from .r import R_GATEWAY, R
from .xpython import XPYTHON

#: R_GATEWAY serves R kernels on a remote gateway (``R.remote``), no kernelspec directly.
BUILTIN = (R, BASH, XPYTHON, OCTAVE, R_GATEWAY)

__all__ = ["BASH", "BUILTIN", "OCTAVE", "R_GATEWAY", "XPYTHON", "R"]
