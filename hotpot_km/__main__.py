"""``python -m hotpot_km``: the ``hotpot-km`` command (autostart runs the service this way)."""

from .cli import main

main()
