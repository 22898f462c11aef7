"""Manager-level measurements, run as a subprocess with the python of the system under test.

``run.py`` starts this script once per (system, scenario) so that hotpot_km 0.2.2 is
imported from its own venv and this project from the project's venv; nothing here
imports the benchmark package or anything the old venv lacks (stdlib, jupyter_client,
psutil, hotpot_km). It writes one JSON document with raw samples in seconds or bytes.

Systems: ``cold`` (a plain ``AsyncMultiKernelManager``), ``pooled`` (whichever
``hotpot_km.PooledKernelManager`` the interpreter imports, launching its kernels), ``fork``
(this project's, with ``fork_from_template`` on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

import psutil
from jupyter_client.multikernelmanager import AsyncMultiKernelManager

SETTLE = 0.3  # seconds of quiet before each measured start: refills and shutdowns finish first


def versions() -> dict[str, str]:
    """Versions of what this interpreter measures with, for the report."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("hotpot_km", "jupyter_client", "ipykernel", "pyzmq"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def new_manager(system: str, pool: int, **traits: Any) -> AsyncMultiKernelManager:
    """A cold manager, or the interpreter's hotpot_km pool with its default settings
    (plus ``traits``; ``fork``: fork mode on)."""
    if system == "cold":
        return AsyncMultiKernelManager()
    from hotpot_km import PooledKernelManager

    if system == "fork":
        traits["fork_from_template"] = {"python3": True}
    elif "fork_from_template" in PooledKernelManager.class_trait_names():
        # fork mode is this project's default: the launch-based rows launch explicitly
        traits["fork_from_template"] = {"python3": False}
    return PooledKernelManager(kernel_pools={"python3": pool}, **traits)


WARMUP_FAILURES: list[str] = []


async def wait_ready(km: AsyncMultiKernelManager) -> None:
    """Let a pool refill completely, so a measurement sees a handout and not a refill.

    A failed warm-up (e.g. a port taken by another process between its choice and the
    kernel's bind) is noted and waited out: the pool replaces the kernel.
    """
    wait = getattr(km, "wait_for_pool", None)
    while wait is not None:
        try:
            await wait()
            break
        except Exception as error:
            if type(error).__name__ != "WarmupError" or len(WARMUP_FAILURES) >= 5:
                raise
            WARMUP_FAILURES.append(str(error))
    await asyncio.sleep(SETTLE)


async def request(
    kc: Any, msg_type: str, content: dict[str, Any], timeout: float, resend_every: float = 0
) -> dict[str, Any]:
    """One shell round trip; ``resend_every`` repeats it while a cold kernel is not bound yet."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sent: set[str] = set()
    next_send = loop.time()
    while True:
        now = loop.time()
        if now >= deadline:
            raise TimeoutError(f"no reply to {msg_type} in {timeout:g} s")
        if now >= next_send:
            msg = kc.session.msg(msg_type, content)
            kc.shell_channel.send(msg)
            sent.add(msg["header"]["msg_id"])
            next_send = now + resend_every if resend_every else deadline
        try:
            reply = await kc.shell_channel.get_msg(timeout=max(min(next_send, deadline) - now, 0.001))
        except Empty:
            continue
        if reply["parent_header"].get("msg_id") in sent:
            if reply["content"].get("status") == "error":
                raise RuntimeError(f"{msg_type} failed: {reply['content'].get('evalue')}")
            return reply


async def probe(km: AsyncMultiKernelManager, kid: str, code: str | None) -> tuple[float, float]:
    """Times (perf_counter) at which the kernel answered kernel_info, and ran ``code``."""
    kc = km.get_kernel(kid).client()
    kc.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
    try:
        await request(kc, "kernel_info_request", {}, timeout=120, resend_every=1.0)
        info = time.perf_counter()
        if code:
            content = {"code": code, "silent": False, "store_history": True,
                       "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}
            await request(kc, "execute_request", content, timeout=300)
        return info, time.perf_counter()
    finally:
        kc.stop_channels()


def kernel_processes() -> list[psutil.Process]:
    """Kernel processes started by this manager (pooled and handed out)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "ipykernel" in " ".join(child.cmdline()) and child.status() != "zombie":
                found.append(child)
        except psutil.Error:
            continue
    return found


def templates() -> list[psutil.Process]:
    """Fork templates started by this manager."""
    found = []
    for child in psutil.Process().children():
        try:
            if "hotpot_km/fork/template.py" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def pss(pids: list[int]) -> int:
    """Summed proportional set size: shared pages count once, split between their users."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.Error:
            continue
    return total


def rss(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            continue
    return out


def launch_kwargs(kind: str, workdir: str, rep: int) -> dict[str, Any]:
    """Start arguments: none, or the cwd and env jupyter_server passes for a notebook."""
    if kind == "bare":
        return {}
    env = dict(os.environ, JPY_SESSION_NAME=os.path.join(workdir, f"notebook-{rep}.ipynb"))
    return {"cwd": workdir, "env": env}


async def handout(args: argparse.Namespace, km: AsyncMultiKernelManager) -> dict[str, Any]:
    """Start → kernel_info reply (and → ``--code`` done), one kernel at a time."""
    samples: dict[str, list[float]] = {}
    memory: dict[str, list[float]] = {"kernel_rss": [], "pool_rss": []}
    for rep in range(args.reps):
        for kind in args.kinds:
            await wait_ready(km)
            if args.system != "cold":
                pool = rss([p.pid for p in kernel_processes()])
                memory["kernel_rss"].extend(pool)
                memory["pool_rss"].append(sum(pool))
            t0 = time.perf_counter()
            kid = await km.start_kernel(kernel_name="python3", **launch_kwargs(kind, args.workdir, rep))
            started = time.perf_counter()
            info, done = await probe(km, kid, args.code)
            samples.setdefault(f"{kind}:start_kernel", []).append(started - t0)
            samples.setdefault(f"{kind}:kernel_info", []).append(info - t0)
            if args.code:
                samples.setdefault(f"{kind}:code_done", []).append(done - t0)
            if args.system == "cold":
                pid = km.get_kernel(kid).provisioner.pid
                memory["kernel_rss"].extend(rss([pid]))
            await km.shutdown_kernel(kid, now=True)
    return {"samples": samples, "memory": memory}


async def burst(args: argparse.Namespace, km: AsyncMultiKernelManager) -> dict[str, Any]:
    """``--burst`` concurrent starts (cwd + env) against a full pool; each until kernel_info."""
    per_request: list[float] = []
    all_ready: list[float] = []
    for rep in range(args.reps):
        await wait_ready(km)
        t0 = time.perf_counter()

        async def one(i: int, rep: int = rep, t0: float = t0) -> tuple[str, float]:
            kwargs = launch_kwargs("cwd_env", args.workdir, rep * 1000 + i)
            kid = await km.start_kernel(kernel_name="python3", **kwargs)
            info, _ = await probe(km, kid, None)
            return kid, info - t0

        done = await asyncio.gather(*(one(i) for i in range(args.burst)), return_exceptions=True)
        errors = [d for d in done if isinstance(d, BaseException)]
        ok = [d for d in done if not isinstance(d, BaseException)]
        if errors:
            raise RuntimeError(f"{len(errors)} of {args.burst} starts failed: {errors[0]!r}")
        latencies = [lat for _, lat in ok]
        per_request.extend(latencies)
        all_ready.append(max(latencies))
        await asyncio.gather(*(km.shutdown_kernel(kid, now=True) for kid, _ in ok))
    return {"samples": {"burst:all_ready": all_ready, "burst:per_request": per_request}}


async def refill(args: argparse.Namespace, km: AsyncMultiKernelManager) -> dict[str, Any]:
    """A handout from a full pool → the pool full again (refills start at once).

    Cold: a start → the ``--code`` imports done, what a launch-based refill has to do.
    """
    samples: list[float] = []
    for _rep in range(args.reps):
        await wait_ready(km)
        t0 = time.perf_counter()
        kid = await km.start_kernel(kernel_name="python3")
        if args.system == "cold":
            await probe(km, kid, args.code)
        else:
            await km.wait_for_pool()  # type: ignore[attr-defined]
        samples.append(time.perf_counter() - t0)
        await km.shutdown_kernel(kid, now=True)
    return {"samples": {"refill": samples}}


TYPICAL_CELL = """
import numpy as np, pandas as pd, matplotlib.pyplot as plt
df = pd.DataFrame(np.random.default_rng(0).normal(size=(2000, 4)), columns=list("abcd"))
summary = df.describe()
fig, ax = plt.subplots()
df.cumsum().plot(ax=ax)
fig.savefig("/dev/null", format="png")
plt.close(fig)
"""


async def memory(args: argparse.Namespace, km: AsyncMultiKernelManager) -> dict[str, Any]:
    """PSS summed over ``--pool`` heavy kernels (and the fork template), idle and after each
    ran a typical cell. Pools: the kernels are the pool's, taken out all at once."""
    await wait_ready(km)
    if args.system != "cold":
        km.fill_delay = 3600  # type: ignore[attr-defined]  (no refill while measuring)
    kids = [await km.start_kernel(kernel_name="python3") for _ in range(args.pool)]
    if args.system != "cold":
        km.kernel_pools = {}  # type: ignore[attr-defined]
    pids = [km.get_kernel(kid).provisioner.pid for kid in kids]
    for kid in kids:
        await probe(km, kid, args.code)  # cold: the imports; pooled: done already
    extra = [p.pid for p in templates()]
    await asyncio.sleep(1)
    idle = pss(pids + extra)
    for kid in kids:
        await probe(km, kid, args.cell)
    await asyncio.sleep(1)
    used = pss(pids + extra)
    uss = sum(psutil.Process(p).memory_full_info().uss for p in pids + extra)
    await asyncio.gather(*(km.shutdown_kernel(kid, now=True) for kid in kids))
    return {"samples": {"pss_idle": [idle], "pss_cell": [used], "uss_cell": [uss]},
            "template": bool(extra)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    traits: dict[str, Any] = {}
    if args.imports and args.system != "cold":
        # launched kernels import them each, forked ones share the template's imports
        traits["python_imports"] = args.imports.split(",")
    if args.scenario == "refill" and args.system != "cold":
        traits["fill_delay"] = 0  # the refill itself, not the pause before it
    km = new_manager(args.system, args.pool, **traits)
    result: dict[str, Any] = {"system": args.system, "versions": versions()}
    try:
        fill = time.perf_counter()
        await wait_ready(km)
        result["first_fill"] = time.perf_counter() - fill - SETTLE
        scenario = {"handout": handout, "burst": burst, "refill": refill, "memory": memory}
        result.update(await scenario[args.scenario](args, km))
    finally:
        await km.shutdown_all(now=True)
    result["warmup_failures"] = WARMUP_FAILURES
    return result


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", choices=["cold", "pooled", "fork"], required=True)
    parser.add_argument("--scenario", choices=["handout", "burst", "refill", "memory"],
                        required=True)
    parser.add_argument("--imports", default="", help="python_imports of the pools (comma-separated)")
    parser.add_argument("--kinds", default="bare,cwd_env", type=lambda s: s.split(","))
    parser.add_argument("--code", default="", help="code a kernel must have run: imports")
    parser.add_argument("--cell", default=TYPICAL_CELL,
                        help="memory: the cell each kernel runs before the second measure")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--pool", type=int, default=3)
    parser.add_argument("--burst", type=int, default=12)
    parser.add_argument("--workdir", required=True, help="the cwd of cwd_env requests")
    parser.add_argument("--out", required=True, type=Path)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    outcome = asyncio.run(main(arguments))
    arguments.out.write_text(json.dumps(outcome))
