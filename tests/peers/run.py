"""Run jupyter_server's and jupyter_client's own kernel, session and multikernelmanager tests
twice, stock and with the pooled managers swapped in (``hotpot_km_peers.py``), and fail if a
test that passes stock fails pooled, or if the pool served no start.

The tests come from the PyPI sdists of the *installed* versions (``pip download``), cached in
the directory given as the first argument. They run under their own pytest settings
(``filterwarnings = error``, timeouts), from a copy that holds only their tests and
pyproject.toml, so the installed packages are the ones tested. Tests that can't apply to a
pooled manager are listed, with the reason, in ``inapplicable.txt``; they still run stock.

Usage: python tests/peers/run.py CACHE_DIR [DIST...]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The stock and the pooled run of a peer go side by side (half the time);
#: ``HOTPOT_KM_PEERS_PARALLEL=0`` runs one after the other.
PARALLEL = os.environ.get("HOTPOT_KM_PEERS_PARALLEL", "1") != "0"

#: distribution -> the test paths of it that exercise kernel managers
PEERS = {
    "jupyter_server": ["tests/services/kernels", "tests/services/sessions"],
    "jupyter_client": ["tests/test_multikernelmanager.py"],
}


def inapplicable() -> dict[str, str]:
    """node id -> why it can't apply to the pooled managers (``inapplicable.txt``)."""
    out = {}
    for line in (HERE / "inapplicable.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            node, _, reason = line.partition(" ")
            out[node] = reason.strip(" #-")
    return out


def extract(tar: tarfile.TarFile, into: Path) -> None:
    """Extract the sdist's plain files and directories only (tarfile's ``data`` filter,
    which Pythons before 3.11.4, Debian's 3.11.2 among them, lack)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
        return
    members = []
    for member in tar.getmembers():
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            raise ValueError(f"refusing to extract {member.name!r} from {tar.name}")
        members.append(member)
    tar.extractall(into, members=members)  # checked above


def fetch(dist: str, cache: Path) -> Path:
    """A directory with the tests and pyproject.toml of the installed ``dist``'s sdist."""
    ver = version(dist)
    target = cache / f"{dist}-{ver}"
    if (target / "pyproject.toml").exists():
        return target
    downloads = cache / "sdists"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = next(downloads.glob(f"{dist}-{ver}.tar.gz"), None)
    if archive is None:
        pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*pip, "-d", str(downloads), f"{dist}=={ver}"], check=True)
        archive = downloads / f"{dist}-{ver}.tar.gz"
    staging = cache / f".{dist}-{ver}"
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(archive) as tar:
        extract(tar, staging)
    root = staging / f"{dist}-{ver}"
    target.mkdir(parents=True)
    shutil.move(root / "tests", target / "tests")
    shutil.move(root / "pyproject.toml", target / "pyproject.toml")
    shutil.rmtree(staging)
    return target


def outcomes(junit: Path) -> dict[str, str]:
    """node id -> passed, failed, error or skipped, from pytest's JUnit XML."""
    out = {}
    for case in ET.parse(junit).iter("testcase"):
        file = case.get("file", "")
        module = file.removesuffix(".py").replace("/", ".")
        inner = case.get("classname", "")[len(module) + 1 :]
        node = "::".join(filter(None, [file, inner, case.get("name")]))
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            out[node] = "failed"
        elif "error" in kinds:
            out[node] = "error" if node not in out else out[node]
        elif "skipped" in kinds:
            out[node] = "skipped"
        else:
            out[node] = out.get(node, "passed")
    return out


class Run:
    """One pytest run of a peer's tests, stock or pooled, in a process of its own."""

    def __init__(
        self,
        dist: str,
        where: Path,
        pooled: bool,
        skip: dict[str, str],
        nodes: list[str] | None = None,
    ) -> None:
        self.dist, self.label = dist, "pooled" if pooled else "stock"
        if nodes:
            self.label += "-rerun"
        self.junit = where / f"junit-{self.label}.xml"
        self.report = where / f"report-{self.label}.json"
        self.log = where / f"pytest-{self.label}.log"
        for path in (self.junit, self.report):
            path.unlink(missing_ok=True)
        # tornado's gen_test guards each jupyter_client test with 5 s by default: a hang guard,
        # not an assertion, that a shared CI machine can exceed; both runs get the same, longer one
        env = {**os.environ, "ASYNC_TEST_TIMEOUT": "30"}
        env.pop("PYTEST_ADDOPTS", None)  # ours (e.g. CI's cache_dir) are not their settings
        args = [str(Path(sys.executable).with_name("pytest")), *(nodes or PEERS[dist])]
        args += ["-q", "--color=no"]
        args += ["-p", "no:cacheprovider", f"--junitxml={self.junit}", "-o", "junit_family=xunit1"]
        args += ["-o", "log_cli=false"]  # their debug log on the terminal: megabytes per run
        # plugins of this venv their own CI does not load (pytest-asyncio would take their tests)
        args += ["-p", "no:asyncio"]
        if pooled:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
            env["HOTPOT_KM_PEERS_REPORT"] = str(self.report)
            args += ["-p", "hotpot_km_peers"]
            for node in skip:
                if node.split("::")[0].startswith(tuple(PEERS[dist])):
                    args += ["--deselect", node]
        self.started = time.monotonic()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(args, cwd=where, env=env, stdout=out, stderr=out)

    def result(self) -> tuple[dict[str, str], dict]:
        """Wait for the run; its outcomes per node id and what the pooled managers reported."""
        code = self.proc.wait()
        lines = self.log.read_text(errors="replace").splitlines()
        summary = [line for line in lines if line.startswith(("FAILED", "ERROR", "hotpot_km:"))]
        print(
            f"-- {self.dist} {self.label}: exit {code} in {time.monotonic() - self.started:.0f} s"
        )
        print("\n".join(summary + lines[-1:]))
        found = outcomes(self.junit) if self.junit.exists() else {}
        if not found:
            print("\n".join(lines[-60:]))  # collection failed or the run was killed
        served = json.loads(self.report.read_text()) if self.report.exists() else {}
        return found, served


def main() -> int:
    cache = Path(sys.argv[1] if len(sys.argv) > 1 else ".peers").resolve()
    skip = inapplicable()
    failed = False
    pooled_starts = 0
    for dist in sys.argv[2:] or PEERS:
        where = fetch(dist, cache)
        if PARALLEL:
            runs = [Run(dist, where, pooled, skip) for pooled in (False, True)]
            (stock, _), (pooled, served) = (r.result() for r in runs)
        else:
            stock, _ = Run(dist, where, False, skip).result()
            pooled, served = Run(dist, where, True, skip).result()
        passing = {n for n, o in stock.items() if o == "passed"}
        regressed = sorted(n for n in passing - set(skip) if pooled.get(n) != "passed")
        listed = sorted(n for n in skip if n in stock)
        starts = served.get("starts", {})
        pooled_starts += starts.get("pooled", 0)
        print(
            f"== {dist} {version(dist)}: stock {len(passing)}/{len(stock)} passed, pooled "
            f"{sum(o == 'passed' for o in pooled.values())}/{len(pooled)} passed "
            f"({len(listed)} inapplicable, run stock only); starts by the pooled managers: "
            f"{starts}; swapped: {served.get('swapped', [])}"
        )
        for node in listed:
            print(f"   inapplicable: {node} ({skip[node]})")
        if regressed:
            # once more, pooled and alone: some of their tests give a server a fixed second to
            # see a websocket close, which the stock run beside can take from it (seen with
            # sessions/test_api.py::test_restart_kernel[jp_server_config0], whose server uses
            # jupyter_server's own MappingKernelManager in both runs). A test that fails again
            # is a regression; one that passes is reported as flaky.
            again, _ = Run(dist, where, True, skip, nodes=regressed).result()
            for node in [n for n in regressed if again.get(n) == "passed"]:
                print(f"   FLAKY: {node}: {pooled.get(node)} pooled beside the stock run, "
                      "passed pooled when run again alone")
                regressed.remove(node)
        for node in regressed:
            print(f"   REGRESSION: {node}: {pooled.get(node, 'not run')} pooled, passed stock")
        failed |= bool(regressed) or not stock
    if pooled_starts == 0:
        print("== the pool served no start: the pooled managers were not exercised")
        failed = True
    print(f"== peers: {'FAILED' if failed else 'ok'}; pooled starts served: {pooled_starts}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
