"""The registry of per-language preparations: which :class:`Preparation` serves a kernelspec
and which init file extension its pool reads. The languages themselves are in
:mod:`hotpot_km.langs`, one module each (ipykernel's Python in :mod:`hotpot_km.langs.python`),
and any installed package adds its own through the ``hotpot_km.languages`` entry points.

A pooled kernel is started before anyone asks for it, so everything a request
decides (working directory, environment) must be applied afterwards, from
inside the kernel. Each language says how, with *constant* code: the
request's values reach the kernel as JSON and are never spliced into source.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Sequence

from .langs import BUILTIN
from .langs.base import HANDOUT_REPLY, HANDOUT_REQUEST, Preparation
from .langs.python import PYTHON

__all__ = [
    "ENTRY_POINT_GROUP",
    "HANDOUT_REPLY",
    "HANDOUT_REQUEST",
    "PYTHON",
    "Preparation",
    "init_file_extension",
    "kernel_language",
    "preparation_for",
    "remote_language",
]

#: Entry point group of language preparations: ``name = "module:PREPARATION"``, each a
#: :class:`Preparation` whose ``language`` is ``name`` (see docs/languages.md).
ENTRY_POINT_GROUP = "hotpot_km.languages"

log = logging.getLogger(__name__)


@functools.cache
def _preparations() -> dict[str, Preparation]:
    """Every known preparation by ``language``: the built-in ones, then the entry points
    (read once per process; a broken one is logged and left out)."""
    found = {p.language: p for p in (PYTHON, *BUILTIN)}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            prep = entry.load()
        except Exception:
            log.exception("hotpot_km: language entry point %r failed to load", entry.name)
            continue
        if not isinstance(prep, Preparation) or prep.language != entry.name:
            log.error(
                "hotpot_km: language entry point %r is not a Preparation whose language is %r",
                entry.name,
                entry.name,
            )
            continue
        found.setdefault(prep.language, prep)  # the built-in ones are registered as themselves
    return found


def kernel_language(language: str | None, argv: Sequence[str]) -> str | None:
    """The pool's name for the language of a kernelspec (``language``, ``argv``): the
    preparation that serves it, preferring one limited to the spec's program; else the
    kernelspec's own language."""
    preps = sorted(_preparations().values(), key=lambda p: not p.executables)
    for prep in preps:
        if prep.serves(language, argv):
            return prep.language
    return language


def remote_language(language: str | None) -> str | None:
    """The pool's name for the language of a kernel another machine runs: the file of
    :attr:`Preparation.apply` would be on this machine, so a language whose handout goes
    through one is served there by its :attr:`Preparation.remote` preparation (data through
    the stdin channel), if it has one; else it goes cold on a cwd/env change."""
    prep = preparation_for(language)
    if prep is not None and prep.handout_by_file:
        return prep.remote or f"{language} (remote)"
    return language


#: Init-file extensions for languages the pool cannot hand out with a new cwd/env.
_EXTENSIONS = {
    "python": ".py",
    "r": ".R",
    "julia": ".jl",
    "javascript": ".js",
    "typescript": ".ts",
    "scala": ".scala",
    "java": ".java",
    "c++": ".cpp",
    "c": ".c",
    "ruby": ".rb",
    "bash": ".sh",
    "sql": ".sql",
    "octave": ".m",
    "matlab": ".m",
    "go": ".go",
    "rust": ".rs",
}


def preparation_for(language: str | None) -> Preparation | None:
    """How to prepare kernels of a kernelspec ``language``; ``None``: cwd/env can't be applied."""
    return _preparations().get((language or "").lower())


def init_file_extension(language: str | None, reported: str | None = None) -> str | None:
    """Extension of ``kernel_pool_init_<name>.<ext>``: a prepared language's own (IRkernel
    reports ``.r``, the files are ``.R``), else the kernel's ``language_info``'s."""
    prep = preparation_for(language)
    if prep is not None:
        return prep.file_extension
    if reported:
        return reported if reported.startswith(".") else f".{reported}"
    return _EXTENSIONS.get((language or "").lower())
