"""Every language hotpot_km prepares, one module each: what a preparation is (:mod:`.base`),
ipykernel's Python (:mod:`.python`), and the languages besides it.

Each of the latter is a :class:`~hotpot_km.languages.Preparation` whose handout goes through a file
(see :mod:`hotpot_km.langs.handout`); they are registered in the ``hotpot_km.languages``
entry point group like any third party's language (docs/languages.md).
"""

from __future__ import annotations

from .bash import BASH
from .octave import OCTAVE, OCTAVE_GATEWAY
from .r import R_GATEWAY, R
from .xpython import XPYTHON, XPYTHON_GATEWAY

#: The ``*_GATEWAY`` ones serve kernels on a remote gateway (their language's ``remote``),
#: no kernelspec directly.
BUILTIN = (R, BASH, XPYTHON, OCTAVE, R_GATEWAY, XPYTHON_GATEWAY, OCTAVE_GATEWAY)

__all__ = [
    "BASH",
    "BUILTIN",
    "OCTAVE",
    "OCTAVE_GATEWAY",
    "R_GATEWAY",
    "XPYTHON",
    "XPYTHON_GATEWAY",
    "R",
]
