"""``python -m hotpot_km.service``: the ``hotpot-km`` command (used by autostart)."""

from .app import main

main()
