"""The one place that knows the dependencies' internals: one module per dependency.

hotpot_km hands a process it started to jupyter_client's and jupyter_server's own managers,
and moves their connections when a restart changes a kernel's ports. A few of the steps
have no public API, so they reach private attributes. Every such use goes through a
function of :mod:`.jupyter_client`, :mod:`.jupyter_server` or :mod:`.voila`, named after
what it does; each module's ``INTERNALS`` lists what it touches, ``tests/test_compat.py``
checks every entry against the installed versions, and ``pyproject.toml`` bounds each
dependency to the versions that test ran against.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Internal:
    """A private attribute of a dependency: ``owner`` (a class, by dotted path) has
    ``name`` as a class attribute or trait or, with ``instance``, its module assigns it
    (on an instance: ``self._ready = ...``, ``kernel._activity_stream = ...``)."""

    owner: str
    name: str
    instance: bool = False
    why: str = ""
    #: only here may the package's code name it (False: a method the package overrides,
    #: or a name its own classes use too)
    only_here: bool = True
