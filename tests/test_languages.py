"""Kernels that are not ipykernel, handed out warm: each pooled handout is compared with a
real cold start of the same request (cwd, hostile env values, a variable removed), through
what the kernel itself shows: its working directory, its whole environment, its execution
count and the names left in its workspace or history."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import queue
import re
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import requests
from conftest import MARKER, describe, pooled_manager
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.session import Session
from kernel_helpers import ColdReference, run, write_kernelspec
from servers import (
    TOKEN,
    KernelSocket,
    api,
    free_port,
    jupyter_server,
    new_session,
    port_of,
    running,
    voila_command,
)

from hotpot_km import WarmupError
from hotpot_km.langs import R
from hotpot_km.langs.handout import HANDOUT_FILE_VAR
from hotpot_km.languages import ENTRY_POINT_GROUP, _preparations, kernel_language, preparation_for
from hotpot_km.pool import reapply
from hotpot_km.request import LaunchRequest
from hotpot_km.status import manager_status


def marked_processes() -> list[psutil.Process]:
    """Live processes other than this one that carry this test's marker: kernels of any
    language and what they started (bash_kernel's bash, octave_kernel's Octave)."""
    marker = os.environ[MARKER]
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get(MARKER) == marker:
                keeper = "hotpot_km/keeper.py" in " ".join(proc.cmdline())  # outlives by design
                if not keeper and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def children() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


@pytest.fixture(autouse=True)
def no_leftover_processes(jupyter_dirs):
    """Fail the test if any process it started outlives it."""
    yield
    loop_until = 10.0
    waited = 0.0
    while marked_processes() and waited < loop_until:
        import time

        time.sleep(0.2)
        waited += 0.2
    left = marked_processes()
    for proc in left:
        proc.kill()
    assert not left, f"processes left behind: {describe(left)}"

#: Per language: code that writes ``cwd\0KEY=value\0...`` to the file ``{out}`` (a test
#: path of plain characters) and prints what else a cold start must equal.
PROBES = {
    "ir": """\
local({
  env <- Sys.getenv()
  con <- file("{out}", "wb")
  writeBin(c(charToRaw(getwd()), as.raw(0L)), con)
  for (key in names(env)) writeBin(c(charToRaw(paste0(key, "=", env[[key]])), as.raw(0L)), con)
  close(con)
})
cat(ls(globalenv(), all.names = TRUE), sep = "\\n")
""",
    "bash": """\
{ printf '%s\\0' "$(pwd)"; env -0; } > "{out}"
compgen -v | grep -v -x -E 'BASH_COMMAND|BASH_LINENO|BASH_SOURCE|FUNCNAME|HISTCMD|LINENO|RANDOM|SRANDOM|SECONDS|EPOCHSECONDS|EPOCHREALTIME|BASHPID|COLUMNS|LINES|PIPESTATUS|_'
history | sed -e 's/^ *[0-9]* *//' -e 's/PROMPT_[A-Z]*/PROMPT_/g'
""",
    "xpython": """\
import os
with open("{out}", "wb") as f:
    f.write(os.fsencode(os.getcwd()) + b"\\0")
    f.write(b"".join(k + b"=" + v + b"\\0" for k, v in os.environb.items()))
print("\\n".join(sorted(k for k in globals() if not k.startswith("_"))))
""",
    "octave": """\
fid = fopen("{out}", "w"); fwrite(fid, [pwd() char(0)]); fclose(fid);
[status, out] = system("env -0 >> {out}");
disp(strjoin(sort(who())', "\\n")); disp(getenv("PWD"))
""",
}

#: Variables a process has for itself: bash sets ``_`` for each command it runs,
#: bash_kernel's prompt has a random part per kernel, R names its session's own
#: temporary directory.
PER_PROCESS = {"_", "PS1", "PS2", "R_SESSION_TMPDIR"}

HOSTILE = {
    "HOTPOT_QUOTES": "it's \"quoted\" \\ back`tick`",
    "HOTPOT_SUBST": "$(touch hotpot_km_pwned) `id` ${HOME} %s %(x)s",
    "HOTPOT_LINES": "one\ntwo\r\nthree\n",
    "HOTPOT_UNICODE": "\u00e9t\u00e9 \u65e5\u672c \U0001f600",
    "HOTPOT_LONG": "x" * 2500 + "\u00e9" * 2500,
    "HOTPOT_EQUALS": "a=b=c",
    "HOTPOT_EMPTY": "",
}


def read_dump(path: Path) -> tuple[str, dict[str, str]]:
    fields = path.read_bytes().split(b"\0")[:-1]
    env = {}
    for field in fields[1:]:
        key, _, value = field.partition(b"=")
        env[os.fsdecode(key)] = os.fsdecode(value)
    return os.fsdecode(fields[0]), env


async def look(km, kernel_id: str, name: str, out: Path) -> dict:
    """What the kernel shows from inside, through the client a user would have."""
    code = PROBES[name].replace("{out}", str(out))
    text, reply = await run(km, kernel_id, code)
    assert reply["status"] == "ok", (reply, text)
    cwd, env = read_dump(out)
    for key in PER_PROCESS:
        env.pop(key, None)
    return {"cwd": cwd, "env": env, "shown": text, "execution_count": reply["execution_count"]}


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="hotpot_test")
    return logging.getLogger("hotpot_test")


def request_dir(base: Path) -> Path:
    path = base / "wörk dir 'q' $(x)"
    path.mkdir()
    return path


@pytest.mark.parametrize("name", ["ir", "bash", "xpython", "octave"])
async def test_handout_equals_a_cold_start(name, jupyter_dirs, tmp_path, monkeypatch, log):
    monkeypatch.setenv("HOTPOT_DROPPED", "present at launch, not in the request")
    # bash loads ~/.bash_history at start, which every bash kernel of the machine (other
    # tests') appends to when it exits: a history of this test's own
    monkeypatch.setenv("HISTFILE", str(tmp_path / "bash_history"))
    km = pooled_manager(kernel_pools={name: 1}, fill_delay=0)
    km.log = log
    cold = ColdReference()
    try:
        await km.wait_for_pool()
        pooled = children()
        assert len(pooled) == 1
        cwd = request_dir(tmp_path)
        env = dict(os.environ, **HOSTILE, HISTIGNORE="ls:pwd")  # bash's handout keeps it
        del env["HOTPOT_DROPPED"]
        kid = await km.start_kernel(kernel_name=name, cwd=str(cwd), env=env)
        assert km.get_kernel(kid).provisioner.pid in pooled
        seen = await look(km, kid, name, tmp_path / "probe.bin")

        cold_id = await cold.start_kernel(kernel_name=name, cwd=str(cwd), env=env)
        assert cold.get_kernel(cold_id).provisioner.pid not in pooled
        reference = await look(cold, cold_id, name, tmp_path / "probe.bin")

        assert seen["cwd"] == reference["cwd"] == str(cwd)
        assert seen["env"] == reference["env"]
        for key, value in HOSTILE.items():
            assert seen["env"][key] == value
        assert "HOTPOT_DROPPED" not in seen["env"]
        assert HANDOUT_FILE_VAR not in seen["env"]
        assert seen["shown"].splitlines() == reference["shown"].splitlines()
        assert seen["execution_count"] == reference["execution_count"]
        assert not list(tmp_path.rglob("hotpot_km_pwned"))  # nothing ran it, in any cwd
    finally:
        await cold.shutdown_all()
        await km.shutdown_all()
    assert not list(jupyter_dirs["runtime"].glob("*.handout"))  # the refill's went with it


#: Per language: an init file defining ``hotpot_init``, and code printing whether it exists.
INIT_FILES = {
    "ir": (".R", "library(stats); library(methods); hotpot_init <- 1; setwd <- function(...) stop(\"no\")\n", 'cat(exists("hotpot_init"))'),
    "bash": (".sh", "hotpot_init=1\n", 'echo "${hotpot_init+TRUE}"'),
    "xpython": (".py", "hotpot_init = 1\n", 'print("hotpot_init" in globals())'),
    "octave": (".m", "hotpot_init = 1;\n", 'disp(exist("hotpot_init"))'),
}
INIT_SEEN = {"ir": "TRUE", "bash": "TRUE", "xpython": "True", "octave": "1"}


@pytest.mark.parametrize("name", ["ir", "bash", "xpython", "octave"])
async def test_init_file_of_each_language_runs_in_the_pool(name, jupyter_dirs, log):
    ext, text, check = INIT_FILES[name]
    (jupyter_dirs["config"] / f"kernel_pool_init_{name}{ext}").write_text(text)
    km = pooled_manager(kernel_pools={name: 1}, fill_delay=0)
    km.log = log
    try:
        await km.wait_for_pool()
        pooled = children()
        kid = await km.start_kernel(kernel_name=name, cwd=str(jupyter_dirs["work"]))
        assert km.get_kernel(kid).provisioner.pid in pooled
        out, reply = await run(km, kid, check)
        assert reply["status"] == "ok", reply
        assert out.strip() == INIT_SEEN[name]
    finally:
        await km.shutdown_all()


#: Per language: an init file that fails in its middle (what follows would succeed, and
#: bash's last command does), and what the warm-up's error must say.
FAILING_INITS = {
    "ir": (".R", 'hotpot_a <- 1\nstop("hotpot init broke")\nhotpot_b <- 2\n', "hotpot init broke"),
    "bash": (".sh", "hotpot_a=1\nhotpot_km_no_such_command --x\nhotpot_b=2\n",
             "exit status 127: hotpot_km_no_such_command --x"),
    "bash-exit": (".sh", "hotpot_a=1\nexit 3\n", "did not finish"),
    "xpython": (".py", 'hotpot_a = 1\nraise RuntimeError("hotpot init broke")\n', "hotpot init broke"),
    "octave": (".m", 'hotpot_a = 1;\nerror("hotpot init broke");\nhotpot_b = 2;\n', "hotpot init broke"),
}


@pytest.mark.parametrize("case", sorted(FAILING_INITS))
async def test_a_failing_init_file_fails_the_warm_up(case, jupyter_dirs, tmp_path, caplog, log):
    """As a Python init file that raises: the kernel is shut down, never handed out, the
    reason is logged and in the status, and a request starts cold. IRkernel, bash_kernel
    and octave_kernel answer "ok" to such code run silently."""
    name = case.split("-")[0]
    ext, text, expected = FAILING_INITS[case]
    path = jupyter_dirs["config"] / f"kernel_pool_init_{name}{ext}"
    path.write_text(text)
    km = pooled_manager(kernel_pools={name: 1}, fill_delay=0, max_retry_delay=30)
    km.log = log
    try:
        with pytest.raises(WarmupError, match=re.escape(str(path))) as failed:
            await km.wait_for_pool()
        assert expected in str(failed.value)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(str(path) in m and expected in m for m in errors), errors
        pool = manager_status(km)["pools"][name]
        assert pool["warmup_failing"] and expected in pool["last_error"]
        assert not children(), "the kernel whose init failed still runs"
        cwd = request_dir(tmp_path)
        kid = await km.start_kernel(kernel_name=name, cwd=str(cwd), env=dict(os.environ, **HOSTILE))
        seen = await look(km, kid, name, tmp_path / "probe.bin")
        assert seen["cwd"] == str(cwd)
        assert "hotpot_a" not in seen["shown"].split()  # a cold kernel: the init never ran in it
    finally:
        await km.shutdown_all()
    assert not list(jupyter_dirs["runtime"].glob("*.handout*"))


HANGING_INITS = {
    "ir": (".R", "Sys.sleep(600)\n"),
    "bash": (".sh", "sleep 600\n"),
    "xpython": (".py", "import time\ntime.sleep(600)\n"),
    "octave": (".m", "pause(600);\n"),
}


@pytest.mark.parametrize("name", sorted(HANGING_INITS))
async def test_a_hanging_init_file_is_bounded_by_init_timeout(name, jupyter_dirs, log):
    ext, text = HANGING_INITS[name]
    (jupyter_dirs["config"] / f"kernel_pool_init_{name}{ext}").write_text(text)
    km = pooled_manager(kernel_pools={name: 1}, fill_delay=0, init_timeout=3, max_retry_delay=30)
    km.log = log
    try:
        with pytest.raises(WarmupError, match="timed out after 3 s"):
            await km.wait_for_pool()
        assert not children(), "the kernel whose init hung still runs"
    finally:
        await km.shutdown_all()
    assert not list(jupyter_dirs["runtime"].glob("*.handout*"))


async def test_python_imports_apply_to_xeus_python_pools(jupyter_dirs, tmp_path, log):
    """xeus-python is a Python kernel: python_imports are imported before init code, into
    sys.modules only; a module that fails to import fails the warm-up in that step."""
    (jupyter_dirs["config"] / "kernel_pool_init_xpython.py").write_text(
        "import sys\nhotpot_seen = 'colorsys' in sys.modules\n"
    )
    km = pooled_manager(kernel_pools={"xpython": 1}, fill_delay=0, python_imports=["colorsys"])
    km.log = log
    try:
        await km.wait_for_pool()
        pooled = children()
        kid = await km.start_kernel(kernel_name="xpython", cwd=str(tmp_path))
        assert km.get_kernel(kid).provisioner.pid in pooled
        code = "import sys\nprint(hotpot_seen, 'colorsys' in sys.modules, 'colorsys' in globals())"
        out, reply = await run(km, kid, code)
        assert reply["status"] == "ok", reply
        assert out.split() == ["True", "True", "False"]
    finally:
        await km.shutdown_all()
    assert not list(jupyter_dirs["runtime"].glob("*.handout*"))

    km = pooled_manager(
        kernel_pools={"xpython": 1}, fill_delay=0, python_imports=["hotpot_km_no_such_module"]
    )
    km.log = log
    try:
        with pytest.raises(WarmupError, match=r"in python_imports: .*hotpot_km_no_such_module"):
            await km.wait_for_pool()
    finally:
        await km.shutdown_all()


async def test_a_variable_r_reads_at_start_makes_the_request_cold(jupyter_dirs, tmp_path, log):
    km = pooled_manager(kernel_pools={"ir": 1}, fill_delay=0)
    km.log = log
    try:
        await km.wait_for_pool()
        pooled = children()
        env = dict(os.environ, R_LIBS_USER=str(tmp_path))
        kid = await km.start_kernel(kernel_name="ir", cwd=str(tmp_path), env=env)
        assert km.get_kernel(kid).provisioner.pid not in pooled
        assert km.kernel_pool.stats.starts[("ir", "cold", "startup_env")] == 1
        out, reply = await run(km, kid, 'cat(Sys.getenv("R_LIBS_USER"))')
        assert reply["status"] == "ok" and out == str(tmp_path)
    finally:
        await km.shutdown_all()


@pytest.mark.parametrize(
    ("name", "ext", "sabotage"),
    [
        # the init file points the handout elsewhere: applying it fails in the kernel
        ("ir", ".R", 'Sys.setenv(HOTPOT_KM_HANDOUT = "/nonexistent/handout")\n'),
        ("bash", ".sh", "HOTPOT_KM_HANDOUT=/nonexistent/handout\n"),
    ],
)
async def test_a_failing_handout_discards_the_kernel_and_starts_cold(
    name, ext, sabotage, jupyter_dirs, tmp_path, log
):
    (jupyter_dirs["config"] / f"kernel_pool_init_{name}{ext}").write_text(sabotage)
    km = pooled_manager(kernel_pools={name: 1}, fill_delay=0)
    km.log = log
    try:
        await km.wait_for_pool()
        pooled = children()
        cwd = request_dir(tmp_path)
        env = dict(os.environ, **HOSTILE)
        kid = await km.start_kernel(kernel_name=name, cwd=str(cwd), env=env)
        assert km.get_kernel(kid).provisioner.pid not in pooled
        assert not pooled & children(), "the pooled kernel whose handout failed still runs"
        assert km.kernel_pool.stats.starts[(name, "cold", "handout_failed")] == 1
        seen = await look(km, kid, name, tmp_path / "probe.bin")
        assert seen["cwd"] == str(cwd)
        for key, value in HOSTILE.items():
            assert seen["env"][key] == value
    finally:
        await km.shutdown_all()


#: A third party's language package, as docs/languages.md shows it: a kernelspec whose
#: language is "sh" (run by bash_kernel here), prepared with constant shell code.
PLUGIN = '''
from hotpot_km.languages import Preparation

BOOTSTRAP = 'set +o history; history -d -1 2>/dev/null; env -0 > "$HOTPOT_KM_HANDOUT"'
APPLY = r"""
__sh_apply() {
  local file=$HOTPOT_KM_HANDOUT fd cwd kv
  exec {fd}<"$file" || return 1
  IFS= read -r -d '' cwd <&"$fd" || return 1
  for kv in $(compgen -e); do
    case $kv in PS1|PS2|PROMPT_COMMAND) ;; *) unset -v "$kv" ;; esac
  done
  while IFS= read -r -d '' kv <&"$fd"; do
    case ${kv%%=*} in PS1|PS2|PROMPT_COMMAND) ;; *) export -- "$kv" || return 1 ;; esac
  done
  exec {fd}<&-
  cd -- "$cwd" && rm -- "$file"
}
__sh_apply && unset -f __sh_apply && set -o history
"""

SH = Preparation(
    language="sh",
    file_extension=".sh",
    bootstrap=BOOTSTRAP,
    import_modules="",
    apply=APPLY,
    startup_env=frozenset({"PATH", "HOME", "LANG", "LC_ALL", "BASH_ENV"}),
)
'''


@pytest.fixture
def plugin_site(tmp_path: Path):
    """A package registering the "sh" language in the ``hotpot_km.languages`` group."""
    site = tmp_path / "site"
    (site / "hotpot_lang_sh").mkdir(parents=True)
    (site / "hotpot_lang_sh" / "__init__.py").write_text(PLUGIN)
    dist = site / "hotpot_lang_sh-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hotpot-lang-sh\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nsh = hotpot_lang_sh:SH\n")
    sys.path.insert(0, str(site))
    _preparations.cache_clear()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("hotpot_lang_sh", None)
        _preparations.cache_clear()


async def test_a_language_added_by_an_entry_point(plugin_site, jupyter_dirs, tmp_path, log):
    argv = [sys.executable, "-m", "bash_kernel", "-f", "{connection_file}"]
    write_kernelspec(jupyter_dirs["data"], "shell", argv, language="sh")
    assert preparation_for("sh") is not None
    km = pooled_manager(kernel_pools={"shell": 1}, fill_delay=0)
    km.log = log
    try:
        await km.wait_for_pool()
        pooled = children()
        cwd = request_dir(tmp_path)
        env = dict(os.environ, **HOSTILE)
        kid = await km.start_kernel(kernel_name="shell", cwd=str(cwd), env=env)
        assert km.get_kernel(kid).provisioner.pid in pooled
        seen = await look(km, kid, "bash", tmp_path / "probe.bin")
        assert seen["cwd"] == str(cwd)
        for key, value in HOSTILE.items():
            assert seen["env"][key] == value
        assert HANDOUT_FILE_VAR not in seen["env"]
    finally:
        await km.shutdown_all()


def test_jupyter_server_sessions_of_r_and_bash_get_warm_kernels(jupyter_dirs, tmp_path):
    """A session with a path: the pooled kernel runs in the notebook's directory with the
    session's env, as configured by a user."""
    (jupyter_dirs["config"] / "jupyter_server_config.py").write_text(
        'c.ServerApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"ir": 1, "bash": 1}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
    )
    root = tmp_path / "root"
    (root / "sub dir").mkdir(parents=True)
    argv = jupyter_server(tmp_path, root)
    with running(argv, cwd=root, port=port_of(argv), ready_path=f"/api/status?token={TOKEN}",
                 log=tmp_path / "server.log") as server:
        pooled = {
            p.pid
            for p in psutil.Process(server.proc.pid).children()
            if {"bash_kernel", "IRkernel::main()"} & set(p.cmdline())
        }
        assert len(pooled) == 2
        checks = {
            "ir": 'cat(getwd(), Sys.getenv("JPY_SESSION_NAME"), Sys.getenv("HOTPOT_KM_HANDOUT", "-"), Sys.getpid(), sep = "\\n")',
            "bash": 'printf "%s\\n" "$PWD" "$JPY_SESSION_NAME" "${HOTPOT_KM_HANDOUT--}" "$PPID"',
        }
        for name, code in checks.items():
            kid = new_session(server, f"sub dir/{name}.ipynb", {"name": name})
            sock = KernelSocket(server, kid)
            try:
                out, reply = sock.run(code)
            finally:
                sock.close()
            assert reply["status"] == "ok", reply
            assert reply["execution_count"] == 1
            cwd, session, handout, pid = out.splitlines()
            assert cwd == str(root / "sub dir")
            assert session.endswith(f"sub dir/{name}.ipynb")
            assert handout == "-"
            assert int(pid) in pooled  # R itself, or bash_kernel that runs the bash


def test_kernel_gateway_hands_out_a_warm_r_kernel_with_the_request_env(jupyter_dirs, tmp_path):
    """Kernel Gateway gives a kernel with a request env only PATH, the request's KERNEL_*
    variables and what ``env_process_whitelist`` lets through from its own env: listing the
    variables R reads at start (HOME, ...) there lets the pool's R kernels serve it."""
    startup = {k: v for k, v in os.environ.items() if k in R.startup_env and k != "PATH"}
    (jupyter_dirs["config"] / "jupyter_kernel_gateway_config.py").write_text(
        'c.KernelGatewayApp.kernel_manager_class = "hotpot_km.mapping.PooledMappingKernelManager"\n'
        'c.PooledKernelManager.kernel_pools = {"ir": 1}\n'
        "c.PooledKernelManager._wait_at_startup = True\n"
        f"c.KernelGatewayApp.env_process_whitelist = {sorted(startup)!r}\n"
    )
    port = free_port()
    argv = [sys.executable, "-m", "kernel_gateway", "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={port}", "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.auth_token={TOKEN}"]
    with running(argv, cwd=tmp_path, port=port, ready_path="/api", log=tmp_path / "kg.log") as server:
        pooled = {
            p.pid
            for p in psutil.Process(server.proc.pid).children()
            if "IRkernel::main()" in p.cmdline()
        }
        assert len(pooled) == 1
        response = requests.post(
            server.url + "/api/kernels",
            json={"name": "ir", "env": {"KERNEL_USERNAME": "al'ice $(x)\n\u00e9"}},
            headers={"Authorization": f"token {TOKEN}"},
            timeout=60,
        )
        assert response.status_code == 201, server.log()[-3000:]
        sock = KernelSocket(server, response.json()["id"])
        try:
            out, reply = sock.run(
                'cat(Sys.getpid(), getwd(), Sys.getenv("KERNEL_USERNAME"), sep = "\\n")'
            )
        finally:
            sock.close()
        assert reply["status"] == "ok", reply
        pid, cwd, user = out.split("\n", 2)
        assert int(pid) in pooled
        assert cwd == str(tmp_path)
        assert user.removesuffix("\n") == "al'ice $(x)\n\u00e9"


#: Per language on a remote gateway: its kernelspec, and code that prints what the kernel
#: shows of itself (pid, cwd, whole environment, the names in its workspace) as one line.
REMOTE_KERNELS = {
    "ir": (
        {"argv": ["R", "--slave", "-e", "IRkernel::main()", "--args", "{connection_file}"],
         "display_name": "R", "language": "R"},
        'cat(jsonlite::toJSON(list(pid = Sys.getpid(), cwd = getwd(), '
        'env = as.list(Sys.getenv()), names = ls(globalenv(), all.names = TRUE)), '
        'auto_unbox = TRUE), "\\n")',
    ),
    "xpython": (
        {"argv": [sys.executable, "-m", "xpython_launcher", "-f", "{connection_file}"],
         "display_name": "xeus-python", "language": "python"},
        'print(__import__("json").dumps({"pid": __import__("os").getpid(), '
        '"cwd": __import__("os").getcwd(), "env": dict(__import__("os").environ), '
        '"names": sorted(globals())}))',
    ),
    # cwd and environment (`env -0`, run by /bin/sh) in base64, then the workspace's names
    "octave": (
        {"argv": [sys.executable, "-m", "octave_kernel", "-f", "{connection_file}"],
         "display_name": "Octave", "language": "octave"},
        'printf ("%d %s %s %s\\n", getpid (), matlab.net.base64encode (uint8 (pwd ())), '
        'matlab.net.base64encode (uint8 (nthargout (2, @system, "env -0"))), '
        'strjoin (who ()\', ","))',
    ),
}


def remote_self(server, kernel_id: str, name: str) -> dict:
    """What a kernel on the gateway shows of itself, through a user's websocket."""
    sock = KernelSocket(server, kernel_id)
    try:
        # a kernel the gateway relaunched at start (a port taken meanwhile by another
        # process) drops what was sent before it answers; server pings keep recv() waiting
        sock.wait_live(timeout=120)
        out, reply = sock.run(REMOTE_KERNELS[name][1], timeout=120)
    finally:
        sock.close()
    assert reply["status"] == "ok", reply
    line = out.strip().splitlines()[-1]
    if name == "octave":
        pid, cwd, env, names = (line + " ").split(" ", 3)
        fields = base64.b64decode(env).split(b"\0")[:-1]
        seen = {
            "pid": int(pid),
            "cwd": os.fsdecode(base64.b64decode(cwd)),
            "env": {os.fsdecode(k): os.fsdecode(v) for k, _, v in
                    (field.partition(b"=") for field in fields)},
            "names": names.split(),
        }
    else:
        seen = json.loads(line)
    for key in ("R_SESSION_TMPDIR", "KERNEL_ID"):  # each process's own
        seen["env"].pop(key, None)
    seen["execution_count"] = reply["execution_count"]
    return seen


@pytest.mark.parametrize("name", sorted(REMOTE_KERNELS))
def test_kernels_pooled_on_a_remote_gateway_get_the_session_env_through_stdin(
    name, jupyter_dirs, tmp_path, monkeypatch
):
    """jupyter_server in gateway mode with a pool of R, xeus-python or Octave kernels on a
    Kernel Gateway: the handout file can't reach the gateway's host, so the request's env
    travels as data on the stdin channel (R's readline, Python's and Octave's input). The
    kernel then equals a cold remote start of the same session, also after a restart
    (which the gateway does with the pool's env). The servers' hostile KERNEL_* values go
    to the gateway with every start, and through the stdin channel with the handout's
    whole environment (to Octave in many lines)."""
    from gateways import gateway, local_server

    for key, value in HOSTILE.items():
        monkeypatch.setenv(f"KERNEL_{key}", value)

    base = tmp_path / "gateway"
    spec = base / "data" / "kernels" / name
    spec.mkdir(parents=True)
    spec.joinpath("kernel.json").write_text(json.dumps(REMOTE_KERNELS[name][0]))
    root = tmp_path / "root"
    (root / "sub dir").mkdir(parents=True)
    path = "sub dir/it's $(x) \u00e9.ipynb"
    pools = f'c.PooledKernelManager.kernel_pools = {{"{name}": 1}}\n'
    with gateway("kernel_gateway", base) as gw:
        with local_server(gw, tmp_path / "cold", root, pooled=False) as cold:
            cold_seen = remote_self(cold, new_session(cold, path, {"name": name}), name)
        # the gateway passes no LANG: the kernels show the é's bytes as their locale does
        assert cold_seen["env"]["JPY_SESSION_NAME"].startswith(str(root / "sub dir/it's $(x) "))

        with local_server(gw, tmp_path / "pooled", root, pooled=True, extra=pools) as server:
            pooled = gw.kernel_ids()
            assert len(pooled) == 1, gw.server.log()[-3000:]
            kernel_id = new_session(server, path, {"name": name})
            assert kernel_id in pooled
            seen = remote_self(server, kernel_id, name)
            assert seen["env"] == cold_seen["env"], sorted(
                set(seen["env"].items()) ^ set(cold_seen["env"].items())
            )
            assert {k: seen[k] for k in ("cwd", "names", "execution_count")} == {
                k: cold_seen[k] for k in ("cwd", "names", "execution_count")
            }
            for key, value in HOSTILE.items():
                if name != "ir" or value.isascii():  # R shows non-ASCII bytes in the C locale
                    assert seen["env"][f"KERNEL_{key}"] == value
            first_pid = seen["pid"]

            response = api(server, "POST", f"/api/kernels/{kernel_id}/restart")
            assert response.status_code == 200, response.text
            try:
                again = remote_self(server, kernel_id, name)
            except AssertionError as error:  # with what both servers saw
                raise AssertionError(
                    f"{error}\n{server.log()[-4000:]}\n{gw.server.log()[-4000:]}"
                ) from None
            assert again["pid"] != first_pid
            assert again["env"] == cold_seen["env"]
            assert again["cwd"] == cold_seen["cwd"]
            assert server.stop() == 0
        assert gw.kernel_ids() == set(), gw.server.log()[-3000:]


@pytest.mark.slow
def test_a_gateway_restart_whose_kernel_cannot_get_its_env_again_fails_clearly(
    jupyter_dirs, tmp_path
):
    """A pooled R kernel on a Kernel Gateway whose restart brings up a process that can't
    take the session's env and cwd (here: the kernelspec's wrapper starts bash_kernel the
    second time, which never asks for input): the restart answers 500, the new process is
    shut down on the gateway rather than left running the user's code with the pool's env,
    and the server's log says why. The server stays up and stops cleanly."""
    from gateways import gateway, local_server

    base = tmp_path / "gateway"
    spec = base / "data" / "kernels" / "ir"
    spec.mkdir(parents=True)
    # the connection file stays the same across a restart: the wrapper marks it
    wrapper = ('if [ -e "$0.started" ]; then exec "$1" -m bash_kernel -f "$0"; fi; '
               ': > "$0.started"; exec R --slave -e "IRkernel::main()" --args "$0"')
    spec.joinpath("kernel.json").write_text(json.dumps({
        "argv": ["sh", "-c", wrapper, "{connection_file}", sys.executable],
        "display_name": "R", "language": "R",
    }))
    root = tmp_path / "root"
    root.mkdir()
    config = ('c.PooledKernelManager.kernel_pools = {"ir": 1}\n'
              "c.PooledKernelManager.startup_timeout = 20.0\n")
    with gateway("kernel_gateway", base) as gw:
        with local_server(gw, tmp_path / "pooled", root, pooled=True, extra=config) as server:
            pooled = gw.kernel_ids()
            kernel_id = new_session(server, "dashboard.ipynb", {"name": "ir"})
            assert kernel_id in pooled
            seen = remote_self(server, kernel_id, "ir")  # the session's, given at handout
            assert seen["env"]["JPY_SESSION_NAME"] == str(root / "dashboard.ipynb")

            response = api(server, "POST", f"/api/kernels/{kernel_id}/restart")
            assert response.status_code == 500, response.text
            assert kernel_id not in gw.kernel_ids(), gw.server.log()[-3000:]
            assert api(server, "GET", f"/api/kernels/{kernel_id}").status_code == 404
            assert (f"the restarted kernel {kernel_id} could not get its session's env and cwd "
                    "again") in server.log()
            assert api(server, "GET", "/api/status").status_code == 200
            assert server.stop() == 0
        assert gw.kernel_ids() == set(), gw.server.log()[-3000:]


class StdinClient:
    """A local kernel's jupyter_client client as the pool's gateway websocket is to a remote
    one: a ``ShellClient`` that answers the kernel's input requests with ``answer_input``."""

    def __init__(self, client) -> None:
        self.client = client
        self.session = client.session
        self.shell_channel = client.shell_channel
        self.control_channel = client.control_channel
        self.answer_input: Callable[[str], str] | None = None

    async def serve_stdin(self) -> None:
        while True:
            try:
                msg = await self.client.stdin_channel.get_msg(timeout=0.1)
            except queue.Empty:
                continue
            if msg["msg_type"] == "input_request":
                answer = self.answer_input
                self.client.input(answer(msg["content"]["prompt"]) if answer else "")


def nudge(client) -> None:
    """Ask for the kernel's info as jupyter_server's websocket does when it connects: on
    shell and on control at once."""
    for channel in (client.shell_channel, client.control_channel):
        channel.send(client.session.msg("kernel_info_request", {}))


async def execute(client, code: str) -> tuple[str, dict]:
    """Run ``code`` through ``client``; its stdout and the reply's content."""
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await client.execute_interactive(code, timeout=30, output_hook=hook)
    return "".join(out), reply["content"]


async def test_a_restarted_octave_kernel_gets_its_handout_while_another_client_asks_its_info(
    jupyter_dirs, tmp_path
):
    """After a gateway restarted an Octave kernel, the gateway's websocket asks the new
    kernel for its info on shell and on control at once (jupyter_server's nudge) while the
    pool gives it its request's cwd and env again through the stdin channel (``reapply``).
    octave_kernel 1.1 makes its Octave on the first kernel_info of either of its threads:
    two at once made two, and when the shell thread's was done first, the handout's cell
    ran in the other one, not set up for input(): the kernel hung for good (about one
    restart in eight in the remote gateway test; one kernel in two here, with an
    ``~/.octaverc`` that takes a second, so the cell starts while the second Octave is
    still being made). The handout waits for both threads' answers first. Five kernels in
    a row: each gets the request's cwd and env."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".octaverc").write_text("pause (1);\n")
    launch_env = dict(os.environ, HOME=str(home))
    launch = LaunchRequest("octave", str(tmp_path), launch_env, process_env=False)
    cwd = request_dir(tmp_path)
    request = LaunchRequest("octave", str(cwd), dict(launch_env, **HOSTILE), process_env=False)
    show = 'printf ("%s\\n%s\\n", pwd (), getenv ("HOTPOT_QUOTES"))'
    for _ in range(5):
        km = AsyncKernelManager(kernel_name="octave")
        await km.start_kernel(cwd=str(tmp_path), env=launch_env)
        client = km.client()
        other = km.client(session=Session(key=km.session.key))  # a connection of its own
        client.start_channels()
        other.start_channels()
        stdin = StdinClient(client)
        answering = asyncio.create_task(stdin.serve_stdin())
        try:
            nudge(other)
            await reapply(stdin, "octave (gateway)", launch, request, 20, km.is_alive)
            out, reply = await execute(client, show)
            assert reply["status"] == "ok", reply
            assert out.replace("\r\n", "\n") == f"{cwd}\n{HOSTILE['HOTPOT_QUOTES']}\n"
        finally:
            answering.cancel()
            client.stop_channels()
            other.stop_channels()
            await km.shutdown_kernel(now=True)


async def test_restarts_of_an_r_kernel_keep_its_cwd_and_env(jupyter_dirs, tmp_path, log):
    """A restart onto a ready pooled R kernel, then one with none ready: both get the
    original request's cwd and env again."""
    km = pooled_manager(kernel_pools={"ir": 1}, fill_delay=0)
    km.log = log
    code = 'cat(Sys.getpid(), getwd(), Sys.getenv("HOTPOT_QUOTES"), sep = "\\n")'
    try:
        await km.wait_for_pool()
        cwd = request_dir(tmp_path)
        kid = await km.start_kernel(kernel_name="ir", cwd=str(cwd), env=dict(os.environ, **HOSTILE))
        pids = []
        for restart in (False, True, True):
            if restart:
                await km.restart_kernel(kid)
            out, reply = await run(km, kid, code)
            assert reply["status"] == "ok", reply
            pid, where, quotes = out.split("\n", 2)
            assert where == str(cwd)
            assert quotes.removesuffix("\n") == HOSTILE["HOTPOT_QUOTES"]
            pids.append(pid)
            await km.wait_for_pool()
        assert len(set(pids)) == 3
    finally:
        await km.shutdown_all()


def test_voila_serves_an_r_notebook_from_the_pool(jupyter_dirs, tmp_path):
    """Voila configured as users write it, with an R pool: each page gets a warm R kernel
    with its own request's env (VOILA_REQUEST_URL) in the notebook's directory."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "voila.json").write_text(json.dumps({
        "VoilaConfiguration": {
            "multi_kernel_manager_class": "hotpot_km.mapping.PooledMappingKernelManager"
        },
        "PooledKernelManager": {"kernel_pools": {"ir": 2}, "_wait_at_startup": True},
    }))
    (jupyter_dirs["config"] / "kernel_pool_init_ir.R").write_text("hotpot_init <- TRUE\n")
    cell = ('cat("PREIMPORTED", exists("hotpot_init"), "\\nCWD", getwd(), "\\nPID", Sys.getpid(),'
            ' "\\nURL", Sys.getenv("VOILA_REQUEST_URL"), "\\n")')
    (app / "dashboard.ipynb").write_text(json.dumps({
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "ir", "display_name": "R", "language": "R"}},
        "cells": [{"cell_type": "code", "id": "c0", "metadata": {}, "outputs": [],
                   "execution_count": None, "source": cell}],
    }))
    port = free_port()
    with running(voila_command("dashboard.ipynb", port), cwd=app, port=port,
                 ready_path="/voila/files/voila.json", log=tmp_path / "voila.log") as server:
        pooled = {
            p.pid
            for p in psutil.Process(server.proc.pid).children()
            if "IRkernel::main()" in p.cmdline()
        }
        assert len(pooled) == 2
        pids = []
        for query in ("?a=1", "?b=2"):
            page = requests.get(server.url + "/" + query, timeout=120)
            assert page.status_code == 200, server.log()[-3000:]
            text = page.text
            assert "PREIMPORTED TRUE" in text
            assert f"CWD {app}" in text
            pid = int(re.search(r"PID (\d+)", text).group(1))
            assert pid in pooled
            pids.append(pid)
            assert query in re.search(r"URL (\S+)", text).group(1)
        assert pids[0] != pids[1]


def test_a_broken_language_entry_point_is_left_out_and_logged(tmp_path, caplog):
    """One that fails to import, and one that is not a Preparation named like its entry
    point: both are logged, the others (built-in ones included) still work."""
    site = tmp_path / "site"
    (site / "broken_lang").mkdir(parents=True)
    (site / "broken_lang" / "__init__.py").write_text(
        "from hotpot_km.langs import BASH\nWRONG = BASH\nraise_here = 1 / 0\n"
    )
    (site / "wrong_lang.py").write_text("from hotpot_km.langs import BASH\nWRONG = BASH\n")
    dist = site / "broken_lang-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-lang\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nbroken = broken_lang:WRONG\nzsh = wrong_lang:WRONG\n"
    )
    sys.path.insert(0, str(site))
    _preparations.cache_clear()
    try:
        with caplog.at_level(logging.ERROR, logger="hotpot_km.languages"):
            assert preparation_for("broken") is None
            assert preparation_for("zsh") is None
            assert preparation_for("r") is R
            assert kernel_language("python", ["python", "-m", "xpython_launcher"]) == "xpython"
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "'broken' failed to load" in messages
        assert "'zsh' is not a Preparation whose language is 'zsh'" in messages
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("broken_lang", None)
        sys.modules.pop("wrong_lang", None)
        _preparations.cache_clear()


def test_kernels_on_a_remote_gateway_get_a_handout_over_the_protocol_or_go_cold():
    """A file on this machine can't reach a kernel a remote gateway runs: there, R,
    xeus-python and Octave kernels get their handout through the stdin channel, bash
    kernels serve only requests with the pool's own env (reason ``language``); Python
    keeps its control-message handout."""
    from hotpot_km.langs import OCTAVE_GATEWAY, R_GATEWAY, XPYTHON_GATEWAY
    from hotpot_km.languages import remote_language
    from hotpot_km.request import ColdReason, LaunchRequest, mismatch

    assert remote_language("python") == "python"
    xpython = kernel_language("python", ["python3", "-m", "xpython_launcher", "-f", "{c}"])
    assert xpython == "xpython"  # never its remote preparation, on any machine
    for language, name, prep in (
        ("R", "ir", R_GATEWAY),
        (xpython, "xpython", XPYTHON_GATEWAY),
        ("octave", "octave", OCTAVE_GATEWAY),
    ):
        assert preparation_for(remote_language(language)) is prep
        assert prep.stdin and not prep.handout_by_file and prep.remote is None
        pooled = LaunchRequest(name, None, {"A": "1"}, process_env=False)  # as the gateway's are
        request = LaunchRequest(name, None, {"A": "2"}, process_env=False)
        assert mismatch(pooled, remote_language(language), request) is None
    # octave_kernel's input goes through a terminal: the handout's data in short lines
    assert 0 < OCTAVE_GATEWAY.stdin_line_max < 4095 and OCTAVE_GATEWAY.stdin_done
    remote = remote_language("bash")
    assert preparation_for(remote) is None
    pooled = LaunchRequest("bash", None, {"A": "1"})
    assert mismatch(pooled, remote, LaunchRequest("bash", None, {"A": "1"})) is None
    found = mismatch(pooled, remote, LaunchRequest("bash", None, {"A": "2"}))
    assert found is not None and found.reason is ColdReason.LANGUAGE
    assert "bash (remote) kernels" in found.detail
