"""Start jupyter_server or Voila as usual, plus one endpoint the benchmark needs.

``GET /bench/pool`` returns once the server's kernel pool is full (hotpot_km's
``wait_for_pool()``, or Voila's preheated renders), so each repetition measures a
handout and not a refill. With ``HOTPOT_BENCH_PHASES=server`` (or ``voila``) the
timers of :mod:`phases` are installed and ``GET /bench/phases`` returns (and resets)
them; ``HOTPOT_BENCH_EXPERIMENTS`` applies the changes of :mod:`experiments`.
Run with the python of the system under test::

    python apps.py server [ServerApp options...]
    python apps.py voila [Voila options...] notebook.ipynb

Only this module's own stdlib/tornado/jupyter imports are used, so it runs in the
hotpot_km 0.2.2 venv as well as in the project's.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from tornado import web


class PoolHandler(web.RequestHandler):
    """Wait for the pool to be full; unauthenticated, servers listen on 127.0.0.1 only."""

    async def get(self) -> None:
        km: Any = self.settings["kernel_manager"]
        started = time.perf_counter()
        failures: list[str] = []
        try:
            if self.get_argument("nowait", ""):  # just "is the server up?"
                pass
            elif (wait := getattr(km, "wait_for_pool", None)) is not None:
                for attempt in range(6):  # a failed warm-up is replaced by the pool
                    try:
                        await wait()
                        break
                    except Exception as error:
                        if type(error).__name__ != "WarmupError" or attempt == 5:
                            raise
                        failures.append(str(error))
            elif isinstance(getattr(km, "_pools", None), dict):  # Voila's preheated kernels
                started_kernels = [t for pool in km._pools.values() for t in pool]
                for item in await asyncio.gather(*started_kernels):
                    await item["task"]  # the notebook's pre-rendering, run to its end
        except Exception as error:
            self.set_status(500)
            self.finish({"error": f"{type(error).__name__}: {error}"})
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"waited": time.perf_counter() - started,
                                "kernels": len(km.list_kernel_ids()),
                                "warmup_failures": failures}))


class PhasesHandler(web.RequestHandler):
    """The phase timings collected since the last call."""

    def get(self) -> None:
        import phases

        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(phases.take()))


HANDLERS = [(r"/bench/pool", PoolHandler), (r"/bench/phases", PhasesHandler)]


def instrument() -> None:
    """Timers and experiments asked for through the environment (profiling runs only)."""
    experiments = [e for e in os.environ.get("HOTPOT_BENCH_EXPERIMENTS", "").split(",") if e]
    if experiments:
        import experiments as changes

        changes.apply(experiments)
    which = os.environ.get("HOTPOT_BENCH_PHASES")
    if which:
        import phases

        missing = phases.install({"server": phases.SERVER, "voila": phases.VOILA}[which])
        if missing:
            print(f"phases not found: {missing}", file=sys.stderr)


def serve_jupyter_server(argv: list[str]) -> None:
    from jupyter_server.serverapp import ServerApp

    class BenchServerApp(ServerApp):  # type: ignore[misc]
        def init_webapp(self) -> None:
            super().init_webapp()
            self.web_app.add_handlers(".*$", HANDLERS)

    BenchServerApp.launch_instance(argv=argv)


def serve_voila(argv: list[str]) -> None:
    from voila.app import Voila

    class BenchVoila(Voila):  # type: ignore[misc]
        def init_handlers(self) -> list[Any]:
            return [*HANDLERS, *super().init_handlers()]

    BenchVoila.launch_instance(argv=argv)


if __name__ == "__main__":
    kind, rest = sys.argv[1], sys.argv[2:]
    instrument()
    {"server": serve_jupyter_server, "voila": serve_voila}[kind](rest)
