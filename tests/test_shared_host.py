"""The pool service run by a normal user (whose file modes are enforced), and a shared host:
a runtime dir others can write to, another user's socket or files, planted files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import unprivileged
from unprivileged import account, own, private_dir, user_env

pytestmark = pytest.mark.usefixtures("no_leftover_kernels")

POOL = '--PooledKernelManager.kernel_pools={"python3": 1}'


class UserService:
    """``hotpot-km serve`` run by the normal user, in Jupyter dirs of its own."""

    def __init__(self, base: Path, *args: str) -> None:
        self.base = base
        self.env = user_env(base)
        self.runtime = Path(self.env["JUPYTER_RUNTIME_DIR"])
        self.log_path = base / "service.log"
        argv = [sys.executable, "-m", "hotpot_km", "serve", POOL,
                "--PooledKernelManager.fill_delay=0", *args]
        with open(self.log_path, "wb") as out:
            self.proc = unprivileged.popen(argv, env=self.env, stdout=out, cwd=base,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any] | None:
        done = unprivileged.run([sys.executable, "-m", "hotpot_km", "status", "--json"],
                                env=self.env, cwd=self.base, capture_output=True, text=True,
                                timeout=60)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def wait_ready(self, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"the service exited:\n{self.log()[-3000:]}"
            doc = self.status()
            if doc:
                pool = doc["pools"]["python3"]
                failures = sum(pool.get("warmup_failures", {}).values())
                assert not failures, f"warm-ups failed: {doc['recent_errors']}\n{self.log()[-3000:]}"
                if pool["ready"] >= 1:
                    return doc
            assert time.monotonic() < deadline, f"no pooled kernel: {doc}\n{self.log()[-3000:]}"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def user_base() -> Iterator[Path]:
    base = private_dir()
    try:
        yield base
    finally:
        unprivileged.remove(base)


def serving(base: Path, *args: str) -> UserService:
    return UserService(base, *args)


def test_a_normal_users_service_pools_kernels(user_base):
    """Binding the socket used to leave a process-wide umask 0177 in force while the pool
    made its connection-file dir: 0600, no search bit, every warm-up Permission denied."""
    svc = serving(user_base)
    try:
        svc.wait_ready()
        pool_dir = svc.runtime / "hotpot_km_pool"
        assert os.stat(pool_dir).st_mode & 0o777 == 0o700
        assert os.stat(svc.runtime / "hotpot-km.sock").st_mode & 0o777 == 0o600
    finally:
        svc.stop()


def test_a_broken_pool_dir_is_repaired(user_base):
    """A ``hotpot_km_pool`` left 0600 by an earlier service is made 0700 again."""
    env = user_env(user_base)
    pool_dir = Path(env["JUPYTER_RUNTIME_DIR"]) / "hotpot_km_pool"
    pool_dir.mkdir(mode=0o600)
    own(pool_dir)
    os.chmod(pool_dir, 0o600)
    svc = serving(user_base)
    try:
        svc.wait_ready()
        assert os.stat(pool_dir).st_mode & 0o777 == 0o700
    finally:
        svc.stop()


def test_the_runner_is_a_normal_user(user_base):
    """The helpers really drop root: a file mode the user lacks is enforced."""
    secret = user_base / "secret"
    secret.write_text("x")
    os.chmod(secret, 0o600)
    os.chown(secret, 0, 0)
    done = unprivileged.run([sys.executable, "-c", f"open({str(secret)!r})"],
                            env=user_env(user_base), capture_output=True, text=True)
    assert done.returncode != 0 and "PermissionError" in done.stderr
    assert account().uid != 0
