"""Voila's internals (checked against 0.5.13; see :mod:`hotpot_km.compat`)."""

from __future__ import annotations

from typing import Any

from . import Internal

INTERNALS = (
    # its tornado application, made right before its loop starts (a name hotpot_km uses too)
    Internal("voila.app.Voila", "app", instance=True, why="Voila's routes", only_here=False),
)


def voila_application(voila: Any) -> Any:
    """The tornado application of a running Voila (None before it made one)."""
    return getattr(voila, "app", None)
