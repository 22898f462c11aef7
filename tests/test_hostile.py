"""Hostile cwd and env values: they reach the kernel as data, exactly, and nothing runs.

Property-based (hypothesis), against one real pooled manager shared by all examples:
it lives on a module-scoped event loop and every example runs its code on that loop.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import (
    MARKER,
    SHARED,
    TEMPLATE_MARK,
    describe,
    isolate_jupyter,
    kernel_children,
    marked_kernels,
    marked_processes,
    pooled_manager,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from kernel_helpers import probe, shut_down

from hotpot_km import PooledKernelManager

#: Any file of this name appearing anywhere under the test's directory means code ran.
PWNED = "hotpot-pwned"

INJECTIONS = [
    '"); import os; os._exit(1)#',
    "'); import os; os._exit(1)#",
    "'''; import os; os._exit(1); '''",
    '"""; import os; os._exit(1); """',
    f"__import__('os').system('touch {PWNED}')",
    f"{{__import__('os').system('touch {PWNED}')}}",
    f"\\\n__import__('os').system('touch {PWNED}')",
    f"\"\"\")\nopen('{PWNED}', 'w')\n(\"\"\"",
    f"$(touch {PWNED})",
    f"`touch {PWNED}`",
]
PIECES = [
    *INJECTIONS,
    '"', "'", "'''", '"""', "\\", "\\\\", "\\n", "\\x00", "\n", "\r\n", "\t", " ",
    "${}", "${HOME}", "$HOME", "{}", "{0}", "{launch_env}", "%s", "%(HOME)s",
    "é", "日本語", "😀", "\u200b", "\u202e", "\u2028", "\x7f", "\x1b[31m",
]

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
hostile_text = st.lists(
    st.one_of(st.sampled_from(PIECES), st.text(_chars, max_size=8)), min_size=1, max_size=6
).map("".join)
long_text = st.builds(
    lambda piece, n: (piece * (n // len(piece) + 1))[:n],
    st.sampled_from(PIECES),
    st.integers(10_000, 100_000),
)
env_values = st.one_of(hostile_text, hostile_text, long_text)
env_keys = hostile_text.map(lambda s: "X_" + s.replace("=", "-"))
hostile_envs = st.dictionaries(env_keys, env_values, min_size=1, max_size=4)
dir_names = hostile_text.map(lambda s: s.replace("/", "_")[:60]).filter(
    lambda s: s not in (".", "..")
)


@dataclass
class Pool:
    loop: asyncio.AbstractEventLoop
    km: PooledKernelManager
    cold: AsyncMultiKernelManager
    base: Path
    base_env: dict[str, str]
    own: dict[str, str]  # what a cold-started kernel adds to its env by itself
    dropped: set[str]  # what it removes

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    monkeypatch = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("hostile")
    isolate_jupyter(base, monkeypatch)
    SHARED.add(base)  # its pool's kernels and template outlive each test: checked here
    marker = os.environ[MARKER]
    loop = asyncio.new_event_loop()
    km = cold = None
    try:

        async def create() -> PooledKernelManager:
            km = pooled_manager(kernel_pools={"python3": 2}, fill_delay=0, max_warming=2)
            await km.wait_for_pool()
            return km

        km = loop.run_until_complete(create())
        cold = AsyncMultiKernelManager()
        base_env = dict(os.environ)
        kid = loop.run_until_complete(cold.start_kernel(env=base_env))
        reference = loop.run_until_complete(probe(cold, kid))["env"]
        loop.run_until_complete(cold.shutdown_kernel(kid, now=True))
        own = {k: v for k, v in reference.items() if base_env.get(k) != v}
        yield Pool(loop, km, cold, base, base_env, own, set(base_env) - set(reference))
    finally:
        if km is not None:
            loop.run_until_complete(shut_down(km))
        if cold is not None:
            loop.run_until_complete(cold.shutdown_all(now=True))
        loop.close()
        monkeypatch.undo()
        SHARED.discard(base)
        deadline = time.monotonic() + 10
        while ours(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = ours(marker)
        for proc in left:
            proc.kill()
        assert not left, f"processes left behind: {describe(left)}"


def ours(marker: str) -> list[psutil.Process]:
    """The module's kernels and fork templates that still run."""
    return marked_kernels(marker) + marked_processes(TEMPLATE_MARK, marker)


def pwned(base: Path) -> list[Path]:
    return list(base.rglob(PWNED))


async def hand_out_and_look(pool: Pool, env: dict[str, str], name: str) -> None:
    cwd = pool.base / "cwds" / uuid.uuid4().hex / name
    cwd.mkdir(parents=True)
    sent = {**pool.base_env, **env}
    await pool.km.wait_for_pool()
    pooled = {p.pid for p in kernel_children()}
    kid = await pool.km.start_kernel(cwd=str(cwd), env=sent)
    try:
        seen = await probe(pool.km, kid)
    finally:
        await pool.km.shutdown_kernel(kid, now=True)
    assert seen["pid"] in pooled, "not a pooled kernel: it died at handout or started cold"
    assert seen["cwd"] == os.path.realpath(cwd)
    expected = {k: v for k, v in {**sent, **pool.own}.items() if k not in pool.dropped}
    assert seen["env"] == expected
    assert seen["execution_count"] == 1
    assert not pwned(pool.base), "a value was executed"


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(env=hostile_envs, name=dir_names)
@example(
    env={
        "X_INJECT": INJECTIONS[0],
        "X_QUOTES": "'\"'''\"\"\"\\",
        "X_${HOME}\n'''": "${HOME}\n\\n\r\n{}%s",
        "X_UNICODE_é😀": "日本語 \u202e é😀",
        "X_LONG": "'''\"\\" * 20_000,
    },
    name='"); import os; os._exit(1)#',
)
@example(
    env={"X_" + INJECTIONS[4]: INJECTIONS[5], "X_TRIPLE": INJECTIONS[7]},
    name=INJECTIONS[4],
)
@example(env={"X_A": "x"}, name="'''\"\"\"\\ ${HOME} \n é😀 " + "x" * 50)
def test_hostile_values_reach_the_kernel_exactly_as_data(pool, env, name):
    pool.run(hand_out_and_look(pool, env, name))


IMPOSSIBLE = {
    "nul_in_value": (ValueError, "NUL"),
    "nul_in_key": (ValueError, "illegal environment variable name"),
    "equals_in_key": (ValueError, "illegal environment variable name"),
    "missing_cwd": (FileNotFoundError, "does not exist"),
    "nul_in_cwd": (ValueError, "NUL"),
}


def impossible_request(pool: Pool, kind: str, text: str, cut: int) -> dict[str, Any]:
    cut = min(cut, len(text))
    spliced = {
        "nul_in_value": f"{text[:cut]}\0{text[cut:]}",
        "nul_in_key": f"X_{text[:cut]}\0{text[cut:]}",
        "equals_in_key": f"X_{text[:cut]}={text[cut:]}",
    }
    cwd = pool.base / "cwds" / uuid.uuid4().hex
    cwd.mkdir(parents=True)
    env = dict(pool.base_env)
    if kind == "nul_in_value":
        env["X_VALUE"] = spliced[kind]
    elif kind in ("nul_in_key", "equals_in_key"):
        env[spliced[kind]] = "1"
    elif kind == "missing_cwd":
        cwd = cwd / "missing" / text.replace("/", "_").replace("\0", "_")
    else:
        return {"cwd": f"{cwd}/{text}\0", "env": env}
    return {"cwd": str(cwd), "env": env}


async def refused(manager: AsyncMultiKernelManager, kwargs: dict[str, Any]) -> Exception:
    try:
        kid = await manager.start_kernel(**kwargs)
    except Exception as error:
        return error
    await manager.shutdown_kernel(kid, now=True)
    raise AssertionError(f"a kernel was started for an impossible request: {kwargs['cwd']!r}")


async def check_impossible(pool: Pool, kind: str, text: str, cut: int) -> None:
    kwargs = impossible_request(pool, kind, text, cut)
    await pool.km.wait_for_pool()
    pooled = {p.pid for p in kernel_children()}
    error = await refused(pool.km, kwargs)
    expected_type, words = IMPOSSIBLE[kind]
    assert isinstance(error, expected_type), repr(error)
    assert words in str(error), str(error)
    # a cold start fails the same way
    assert type(await refused(pool.cold, kwargs)) is type(error)
    # nothing was started, and the pooled kernels are still there, unharmed
    assert pool.km.list_kernel_ids() == []
    assert {p.pid for p in kernel_children()} == pooled
    assert not pwned(pool.base)


@settings(max_examples=15, deadline=None, database=None)
@given(kind=st.sampled_from(sorted(IMPOSSIBLE)), text=hostile_text, cut=st.integers(0, 30))
@example(kind="missing_cwd", text="does-not-exist", cut=0)
@example(kind="nul_in_value", text=INJECTIONS[0], cut=3)
@example(kind="equals_in_key", text="A", cut=1)
def test_impossible_values_fail_clearly_like_a_cold_start(pool, kind, text, cut):
    pool.run(check_impossible(pool, kind, text, cut))


#: Any text, lone surrogates and NUL included, and text decoded from arbitrary bytes as
#: os.environ and os.listdir decode them (``surrogateescape``).
any_text = st.text(st.characters(), max_size=12)
from_bytes = st.binary(max_size=12).map(os.fsdecode)
arbitrary = st.one_of(any_text, from_bytes, hostile_text)
arbitrary_envs = st.dictionaries(arbitrary.map(lambda s: "X_" + s), arbitrary, max_size=3)
arbitrary_names = st.one_of(from_bytes, any_text).map(lambda s: s.replace("/", "_")).filter(
    lambda s: s not in ("", ".", "..")
)


async def start_and_look(manager: AsyncMultiKernelManager, kwargs: dict[str, Any]) -> Any:
    """What a kernel started with ``kwargs`` sees, or the start's error. Started once more,
    by either manager alike, if the kernel died before its first reply: jupyter_client picks
    a cold kernel's ports in this process, and another process (the other test worker) can
    take one before the kernel binds it ("Address already in use")."""
    for attempt in range(2):
        try:
            kid = await manager.start_kernel(**kwargs)
        except Exception as error:
            return error
        try:
            return await probe(manager, kid)
        except RuntimeError as error:
            if attempt or "died before replying" not in str(error):
                raise
        finally:
            await manager.shutdown_kernel(kid, now=True)
    raise AssertionError("unreachable")


async def as_cold(pool: Pool, env: dict[str, str], name: str) -> None:
    cwd = pool.base / "cwds" / uuid.uuid4().hex / name
    try:
        cwd.mkdir(parents=True)
    except (ValueError, UnicodeEncodeError):  # a name no directory can have: a clear error
        pass
    kwargs = {"cwd": str(cwd), "env": {**pool.base_env, **env}}
    await pool.km.wait_for_pool()
    pooled = await start_and_look(pool.km, kwargs)
    cold = await start_and_look(pool.cold, kwargs)
    if isinstance(cold, Exception):
        assert type(pooled) is type(cold), (pooled, cold)
    else:
        assert not isinstance(pooled, Exception), pooled
        assert (pooled["cwd"], pooled["env"]) == (cold["cwd"], cold["env"])
        assert pooled["execution_count"] == 1
    assert pool.km.list_kernel_ids() == []
    assert not pwned(pool.base)


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(env=arbitrary_envs, name=arbitrary_names)
@example(env={"X_LATIN1": os.fsdecode(b"caf\xe9 \xff")}, name=os.fsdecode(b"caf\xe9"))
@example(env={"X_" + os.fsdecode(b"\xff"): "x"}, name="plain")
@example(env={"X_LONE": "\ud800"}, name="plain")
@example(env={}, name="nul\0")
def test_arbitrary_cwd_and_env_get_a_cold_starts_result_or_its_error(pool, env, name):
    """Whatever the text (any code point, or bytes as os.environ decodes them), a pooled
    manager's start gets what a real cold start of the same request gets: the same cwd
    and env in the kernel, or an error of the same type; no kernel is left behind."""
    pool.run(as_cold(pool, env, name))
