"""Running code in kernels from tests, through the kernel's own client."""

from __future__ import annotations

import json
from typing import Any

from jupyter_client.multikernelmanager import AsyncMultiKernelManager

PROBE = """
import os, sys, json
print(json.dumps({
    "cwd": os.getcwd(),
    "env": dict(os.environ),
    "session": globals().get("__session__"),
    "modules": sorted(m for m in ("colorsys", "wave", "_hotpot_km") if m in sys.modules),
    "pid": os.getpid(),
    "user_names": sorted(k for k in globals() if not k.startswith("_")),
}))
"""


async def run(km: AsyncMultiKernelManager, kernel_id: str, code: str) -> tuple[str, dict]:
    """Run ``code`` in a kernel; return its stdout and the execute reply content."""
    client = km.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=30)
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])

        reply = await client.execute_interactive(code, timeout=60, output_hook=hook)
        return "".join(out), reply["content"]
    finally:
        client.stop_channels()


async def probe(km: AsyncMultiKernelManager, kernel_id: str) -> dict:
    """What a kernel looks like from inside: cwd, env, session, imported test modules, pid."""
    out, reply = await run(km, kernel_id, PROBE)
    assert reply["status"] == "ok", reply
    data = json.loads(out.strip().splitlines()[-1])
    data["execution_count"] = reply["execution_count"]
    return data
