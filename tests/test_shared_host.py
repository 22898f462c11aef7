"""The pool service run by a normal user (whose file modes are enforced), and a shared host:
a runtime dir others can write to, another user's socket or files, planted files."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import unprivileged
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyter_client.kernelspec import KernelSpecManager
from servers import (
    Server,
    free_port,
    jupyter_server,
    log_tracebacks,
    port_of,
    running,
    voila_command,
    write_notebook,
)
from service_helpers import hotpot_km, runner_env, service, status
from test_service import wait_gone
from unprivileged import account, own, private_dir, user_env

from hotpot_km.service.autostart import start_service
from hotpot_km.service.client import ServiceUnavailable, call
from hotpot_km.service.paths import ServicePaths
from hotpot_km.service.protocol import LINE_LIMIT, encode, hello

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
    os.chmod(secret, 0)  # root would read it anyway
    done = unprivileged.run([sys.executable, "-c", f"open({str(secret)!r})"],
                            env=user_env(user_base), capture_output=True, text=True)
    assert done.returncode != 0 and "PermissionError" in done.stderr
    assert account().uid != 0


# -- a shared runtime dir, another user's files -------------------------------------------------


@pytest.fixture
def dirs(jupyter_dirs, monkeypatch, tmp_path) -> dict[str, Path]:
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "0")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    return {**jupyter_dirs, "tmp": tmp_path}


def serve_once(runtime: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``hotpot-km serve`` (no pool) in ``runtime``, expected to refuse at once."""
    env = runner_env(JUPYTER_RUNTIME_DIR=str(runtime))
    return hotpot_km("serve", "--ServeApp.idle_timeout=1", env=env, timeout=timeout)


@pytest.mark.parametrize("case", ["world-writable", "group-writable", "another-owner"])
def test_the_service_and_autostart_refuse_a_runtime_dir_others_control(dirs, case):
    runtime = Path(tempfile.mkdtemp(prefix="hk-shared-"))  # short enough for a socket path
    if case == "world-writable":  # a sticky /tmp, as on HPC login nodes
        os.chmod(runtime, 0o1777)
    elif case == "group-writable":
        os.chmod(runtime, 0o770)
    elif os.getuid() == 0:
        os.chown(runtime, account().uid, account().gid)
    else:  # a normal user can't give a directory away: one of root's stands in
        runtime = Path("/")
    try:
        done = serve_once(runtime)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "set JUPYTER_RUNTIME_DIR to a private directory" in done.stderr, done.stderr
        assert not (runtime / "hotpot-km.lock").exists()
        said = start_service(ServicePaths(str(runtime)), 5.0, "python3")
        assert said.startswith("not starting the pool service") and "JUPYTER_RUNTIME_DIR" in said
        assert not (runtime / "hotpot-km-service.log").exists()
    finally:
        if runtime != Path("/"):
            unprivileged.remove(runtime)


def test_planted_symlinks_are_not_followed(dirs):
    runtime = dirs["runtime"]
    target = dirs["tmp"] / "precious"
    target.write_text("precious\n")
    (runtime / "hotpot-km.lock").symlink_to(target)
    done = serve_once(runtime)
    assert done.returncode == 1 and "is a symbolic link" in done.stderr, done.stderr
    said = start_service(ServicePaths(str(runtime)), 5.0, "python3")
    assert said.startswith("not starting") and "symbolic link" in said, said
    (runtime / "hotpot-km.lock").unlink()
    (runtime / "hotpot-km-service.log").symlink_to(target)
    said = start_service(ServicePaths(str(runtime)), 5.0, "python3")
    assert said.startswith("not starting") and "symbolic link" in said, said
    assert target.read_text() == "precious\n"


def test_autostart_never_imports_from_the_runtime_dir(dirs):
    """``python -m hotpot_km`` run in the runtime dir imported a ``hotpot_km/`` planted there."""
    runtime = dirs["runtime"]
    planted = runtime / "hotpot_km"
    planted.mkdir()
    witness = dirs["tmp"] / "planted-code-ran"
    code = f"open({str(witness)!r}, 'w').close()\n"
    (planted / "__init__.py").write_text(code)
    (planted / "__main__.py").write_text(code)
    paths = ServicePaths(str(runtime))
    said = start_service(paths, 30.0, "python3")
    assert said.startswith("started the pool service"), said
    deadline = time.monotonic() + 120
    while (doc := status()) is None:
        assert not witness.exists(), "code planted in the runtime dir ran"
        assert time.monotonic() < deadline, Path(paths.log).read_text()
        time.sleep(0.2)
    pid = doc["service"]["pid"]
    try:
        assert not witness.exists(), "code planted in the runtime dir ran"
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid, 60)


def test_the_client_sends_nothing_to_another_users_socket(dirs):
    """A socket in a shared runtime dir may be anyone's: the client checks the listener's uid
    (``SO_PEERCRED``) before it sends a byte (a launch carries the whole environment)."""
    runtime = Path(tempfile.mkdtemp(prefix="hotpot-km-shared-"))  # reachable by the account
    os.chmod(runtime, 0o1777)
    listener = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n"
        "import os; os.chmod(sys.argv[1], 0o666); print('listening', flush=True)\n"
        "c, _ = s.accept(); c.settimeout(5)\n"
        "data = b''\n"
        "try:\n"
        "    while chunk := c.recv(65536): data += chunk\n"
        "except OSError: pass\n"
        "sys.stdout.write(repr(data)); sys.stdout.flush()\n"
    )
    sock = runtime / "hotpot-km.sock"
    # another user: the test account when root; a normal user can't run as anyone else, so
    # then the listener is the user itself and the client must talk to it
    other = os.getuid() == 0
    argv = [sys.executable, "-c", listener, str(sock)]
    home = private_dir()
    proc = (unprivileged.popen(argv, env=user_env(home), cwd="/", stdout=subprocess.PIPE, text=True)
            if other else subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    try:
        assert proc.stdout.readline().strip() == "listening"
        if other:
            with pytest.raises(ServiceUnavailable, match=r"runs as uid \d+, not as this user"):
                asyncio.run(call(str(sock), "status", timeout=10))
        else:
            with pytest.raises(ServiceUnavailable):  # it answers nothing: a timeout
                asyncio.run(call(str(sock), "status", timeout=2))
        out, _ = proc.communicate(timeout=30)
        got = ast.literal_eval(out)  # the bytes the listener received
        assert (got == b"") if other else b'"protocol":"hotpot-km"' in got
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        unprivileged.remove(home)
        unprivileged.remove(runtime)


# -- the service's socket: clients that vanish, stall, or send garbage ---------------------------


def launch_request(cwd: str) -> dict[str, Any]:
    """What the provisioner sends for a start of python3 (see ``ServiceProvisioner``)."""
    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"op": "launch", "kernel_name": "python3",
            "spec": {"argv": spec.argv, "env": spec.env, "language": spec.language},
            "cwd": cwd, "env": runner_env(), "options": {}, "encryption": "disabled"}


def connect() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(ServicePaths.default().socket)
    return sock


def replies(sock: socket.socket) -> list[dict[str, Any]]:
    """Every line the service sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def until(predicate: Any, what: str, timeout: float = 60, log: Any = str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} after {timeout:g} s\n{log()}"
        time.sleep(0.1)


def no_leases(svc: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (doc := status()) is None or doc["leases"]:
        assert time.monotonic() < deadline, f"leases left: {doc and doc['leases']}\n{svc.log()}"
        time.sleep(0.2)


PLAIN = '--PooledKernelManager.pool_kwargs={"python3": {}}'  # starts without extra arguments


def test_a_kernel_whose_client_vanished_before_the_reply_is_ended(dirs):
    with service(dirs["tmp"] / "service.log", PLAIN) as svc:
        [pooled] = svc.kernel_pids()
        sock = connect()
        sock.sendall(encode(hello()) + encode(launch_request(str(dirs["work"]))))
        # the client is gone once its kernel is handed out, its reply unread; its process
        # (this one) lives on (a client that closes before the service read its request
        # gets nothing handed out at all)
        until(lambda: f"handed a 'python3' kernel (pid {pooled})" in svc.log(), "the handout",
              log=svc.log)
        sock.close()
        until(lambda: "ending it" in svc.log(), "end of the lease", log=svc.log)
        no_leases(svc)
        wait_gone(pooled, 30)
        svc.wait_ready()  # and the pool is full again


def test_a_stalled_client_gets_an_error_and_is_closed(dirs):
    with service(dirs["tmp"] / "service.log", "--ServeApp.read_timeout=1", pools=0):
        sock = connect()
        sock.sendall(b'{"protocol": "hotpot')  # never finishes its hello
        [answer] = replies(sock)
        assert answer == {"error": "no complete line in 1 s"}
        sock = connect()
        sock.sendall(encode(hello()) + b'{"op": "sta')  # nor its request
        [_, answer] = replies(sock)
        assert answer == {"ok": False, "error": "no complete line in 1 s"}
        assert status() is not None


def test_a_deeply_nested_line_gets_a_clear_error(dirs):
    with service(dirs["tmp"] / "service.log", pools=0) as svc:
        sock = connect()
        sock.sendall(encode(hello()) + b"[" * 100_000 + b"]" * 100_000 + b"\n"
                     + encode({"op": "status"}))
        sock.shutdown(socket.SHUT_WR)
        [_, nested, answer] = replies(sock)
        assert nested == {"ok": False, "error": "a JSON line nested too deeply"}
        assert answer["ok"] is True and answer["status"]["enabled"] is True
        assert not log_tracebacks(svc.log()) and "RecursionError" not in svc.log()


# -- hotpot-km status --url ------------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    """Redirects ``/api/hotpot_km/status`` to ``server.target``; answers anything else with a
    status document of no pool, recording the Authorization header it got."""

    def do_GET(self) -> None:
        if self.path == "/api/hotpot_km/status":
            self.send_response(302)
            self.send_header("Location", self.server.target)  # type: ignore[attr-defined]
            self.end_headers()
            return
        self.server.seen.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        body = json.dumps({"enabled": False, "message": "no pool"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_status_sends_the_token_only_to_the_server_it_was_given_for(dirs):
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Recorder) for _ in range(2)]
    for server in servers:
        server.seen = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
    first, other = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    try:
        servers[0].target = f"{other}/elsewhere"  # type: ignore[attr-defined]
        done = hotpot_km("status", f"--url={first}/", "--token=s3cret", "--json")
        assert done.returncode == 2, done.stderr  # the other server answered: no pool
        assert servers[1].seen == [None]  # type: ignore[attr-defined]
        servers[0].target = f"{first}/moved"  # type: ignore[attr-defined]
        done = hotpot_km("status", f"--url={first}/", "--token=s3cret", "--json")
        assert done.returncode == 2, done.stderr
        assert servers[0].seen == ["token s3cret"]  # type: ignore[attr-defined]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


# -- public surfaces: a server without authentication --------------------------------------------

SECRET = "postgres://app:hunter2@db.internal/prod"
FAILING_INIT = f"raise ConnectionError({SECRET!r})\n"


def failing_pool(config: Path) -> None:
    """An init file whose error text holds a credential, as a connection error's may."""
    (config / "kernel_pool_init_python3.py").write_text(FAILING_INIT)


def until_warmup_failed(server: Server, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"token {token}"} if token else {}
    deadline = time.monotonic() + 120
    while True:
        doc = requests.get(server.url + STATUS, headers=headers, timeout=60).json()
        if doc["recent_errors"]:
            return doc
        assert time.monotonic() < deadline, f"no warm-up failure:\n{server.log()[-3000:]}"
        time.sleep(0.3)


STATUS = "/api/hotpot_km/status"
VOILA_JSON = {
    "VoilaConfiguration": {
        "multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
    "PooledKernelManager": {"kernel_pools": {"python3": 1}},
}


@pytest.mark.parametrize("allowed", [False, True])
def test_a_public_voila_shows_no_pool_unless_configured_and_never_error_text(
        jupyter_dirs, tmp_path, allowed):
    failing_pool(jupyter_dirs["config"])
    app = tmp_path / "app"
    app.mkdir()
    config = dict(VOILA_JSON)
    if allowed:
        config["HotpotKMStatus"] = {"allow_unauthenticated": True}
    (app / "voila.json").write_text(json.dumps(config))
    write_notebook(app / "dashboard.ipynb", "print('hello')")
    port = free_port()
    with running(voila_command("dashboard.ipynb", port), cwd=app, port=port,  # no token
                 ready_path="/voila/files/voila.json", log=tmp_path / "voila.log") as server:
        metrics = requests.get(server.url + "/metrics", timeout=60)
        if not allowed:
            response = requests.get(server.url + STATUS, timeout=60)
            assert response.status_code == 403
            assert "HotpotKMStatus.allow_unauthenticated" in response.text
            assert metrics.status_code == 403 and "hotpot_km" not in metrics.text
            done = hotpot_km("status", f"--url={server.url}/")
            assert done.returncode == 1 and "allow_unauthenticated" in done.stderr, done.stderr
            return
        doc = until_warmup_failed(server)
        [error, *_] = doc["recent_errors"]
        assert "ConnectionError" in error["message"] and "kernel_pool_init_python3.py" in error[
            "message"]
        assert metrics.status_code == 200 and "hotpot_km_kernel_starts" in metrics.text
        done = hotpot_km("status", f"--url={server.url}/")
        for text in (json.dumps(doc), metrics.text, requests.get(server.url + "/metrics",
                                                                 timeout=60).text, done.stdout):
            assert "hunter2" not in text
        assert "hunter2" in server.log()  # the whole message stays with the server's owner


def test_a_jupyter_server_without_a_token_keeps_the_pool_to_itself(jupyter_dirs, tmp_path):
    failing_pool(jupyter_dirs["config"])
    (jupyter_dirs["config"] / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"},
        "PooledKernelManager": {"kernel_pools": {"python3": 1}}}))
    root = tmp_path / "root"
    root.mkdir()
    argv = [arg for arg in jupyter_server(tmp_path, root) if not arg.startswith(
        "--IdentityProvider.token=")] + ["--IdentityProvider.token="]
    with running(argv, cwd=root, port=port_of(argv), ready_path="/api/status",
                 log=tmp_path / "server.log") as server:
        until(lambda: "warm-up of a pooled" in server.log(), "warm-up failure", log=server.log)
        response = requests.get(server.url + STATUS, timeout=60)
        assert response.status_code == 403 and "allow_unauthenticated" in response.text
        metrics = requests.get(server.url + "/metrics", timeout=60)
        assert metrics.status_code == 200  # jupyter_server's own series stay
        assert "http_request_duration_seconds" in metrics.text
        assert not [line for line in metrics.text.splitlines() if "hotpot_km_" in line.split("{")[0]]


# -- fuzzing the service's socket ----------------------------------------------------------------

OPS = ["launch", "poll", "signal", "kill", "terminate", "release", "status", "", "nope",
       "__init__", "answer", "_converse"]
LEASE_OPS = {"poll", "signal", "kill", "terminate", "release"}
FIELDS = ["lease", "signum", "kernel_name", "spec", "cwd", "env", "options", "encryption",
          "restart", "wait"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12,
)
random_requests = st.builds(lambda op, fields: {"op": op, **fields},
                            st.sampled_from(OPS) | st.text(max_size=12),
                            st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5))
clients = st.one_of(
    st.tuples(st.just("request"), random_requests,
              st.sampled_from(["read", "slow", "vanish", "truncate"])),
    st.tuples(st.just("bytes"), st.binary(max_size=3000)),
    st.tuples(st.just("nested"), st.integers(1, 200_000)),
    st.tuples(st.just("hello"), st.binary(max_size=200)),
    st.tuples(st.just("launch"), st.sampled_from(["read", "vanish", "truncate"])),
)


def exchange(payload: bytes, slow: bool = False) -> dict[str, Any]:
    """Send the hello and one line; the service's one reply to that line."""
    with connect() as sock:
        sock.sendall(encode(hello()))
        if slow:
            for i in range(0, len(payload), 7):
                sock.sendall(payload[i:i + 7])
                time.sleep(0.001)
        else:
            sock.sendall(payload)
        reader = sock.makefile("rb")
        assert json.loads(reader.readline())["protocol"] == "hotpot-km"
        line = reader.readline()
    assert line.endswith(b"\n"), line
    reply = json.loads(line)
    assert isinstance(reply.get("ok"), bool), reply
    if not reply["ok"]:
        assert isinstance(reply.get("error"), str) and reply["error"], reply
        assert "internal error" not in reply["error"], reply
    return reply


def check_client(client: tuple[Any, ...], cwd: str) -> None:
    kind = client[0]
    if kind == "request":
        _, request, mode = client
        payload = encode(request)
        if mode in ("vanish", "truncate"):
            with connect() as sock:
                sock.sendall(encode(hello()) + (payload if mode == "vanish" else payload[:-2]))
            return
        reply = exchange(payload, slow=mode == "slow")
        op = request["op"]
        if op == "status":
            assert reply["ok"] and reply["status"]["enabled"] is True
        elif op not in OPS or op in ("", "nope", "__init__", "answer", "_converse"):
            assert reply == {"ok": False, "error": f"unknown request {op!r:.40}"}
        elif op in LEASE_OPS:
            assert reply["ok"] is False and reply["error"].startswith("no kernel lease"), reply
        else:  # a launch of random fields: an error saying which, or a refusal (go cold)
            assert reply["ok"] is False, reply
    elif kind == "bytes":
        reply = exchange(client[1].replace(b"\n", b"") + b"\n")
        assert reply["ok"] is False
    elif kind == "nested":
        depth = client[1]
        reply = exchange(b"[" * depth + b"]" * depth + b"\n")
        assert reply["ok"] is False and reply["error"] in (
            "a JSON line nested too deeply", "a message must be a JSON object")
    elif kind == "hello":  # not our protocol: an error naming it, then the connection ends
        with connect() as sock:
            sock.sendall(client[1].replace(b"\n", b"") + b"\n")
            [answer] = replies(sock)
        assert set(answer) == {"error"} and answer["error"], answer
    else:
        mode = client[1]
        payload = encode(launch_request(cwd))
        if mode != "read":
            with connect() as sock:
                sock.sendall(encode(hello()) + (payload if mode == "vanish" else payload[:-2]))
            return
        reply = exchange(payload)
        if reply["ok"]:
            asyncio.run(call(ServicePaths.default().socket, "release", lease=reply["lease"]))
        else:
            assert reply.get("refused") is True, reply
    assert status() is not None, "the service stopped answering"


def test_fuzz_the_service_socket(dirs):
    """Random, truncated, oversized, deeply nested, slow and vanishing clients: each gets an
    exact answer or a clear error, the service keeps serving, nothing is left behind."""
    with service(dirs["tmp"] / "service.log", PLAIN, "--ServeApp.read_timeout=2") as svc:

        @settings(max_examples=60, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(client=clients)
        def fuzz(client: tuple[Any, ...]) -> None:
            check_client(client, str(dirs["work"]))

        fuzz()
        # one line longer than any the service reads
        reply = exchange(b" " * (LINE_LIMIT + 1) + b"\n")
        assert reply["error"].startswith("request too large")
        no_leases(svc)
        assert status() is not None
        svc.wait_ready()
        # kernels whose clients vanished get a few seconds' grace, then are killed
        until(lambda: len(svc.kernel_pids()) == 1, "end of every handed-out kernel",
              log=svc.log)
        assert not log_tracebacks(svc.log()), svc.log()[-5000:]
