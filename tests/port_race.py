"""One more run for a test that failed while a kernel died of jupyter_client's port race.

jupyter_client picks a kernel's free ports in the process that starts it and hands them
to the kernel, which binds them a moment later; another process (the other test worker,
or a server it runs) can take one in between, and the kernel fails with ``Address already
in use`` (on Python 3.13 it may even stay alive, hung in its exit). A test then fails for
a reason outside this project. Such a test runs once more, and only such a test: it
failed, and the kernel's bind error is in what it printed or in its failure. The rerun's
result is the test's result, and every rerun is listed at the end of the run.
"""

from __future__ import annotations

from typing import Any

import pytest
from _pytest.runner import runtestprotocol

#: What a kernel that lost one of its ports to another process prints.
SIGNATURE = "Address already in use"

_reruns: list[tuple[str, str]] = []


def _raced(reports: list[pytest.TestReport]) -> bool:
    failed = [r for r in reports if r.failed]
    return any(
        SIGNATURE in r.longreprtext
        or any(SIGNATURE in content for _, content in r.sections)
        for r in failed
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    if _raced(reports):
        first = next(r for r in reports if r.failed)
        crash = getattr(first.longrepr, "reprcrash", None)
        why = (crash.message if crash else first.longreprtext).strip().splitlines()[:1]
        what = (why[0] if why else first.when) + _where(first)
        item._initrequest()  # type: ignore[attr-defined]  # fresh fixtures for the second run
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        for report in reports:
            report.user_properties.append(("port_race_rerun", what))
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _where(report: pytest.TestReport) -> str:
    """`` at <file>:<line>``: the innermost line of the test's own files in the failure's
    traceback (where a timeout found it waiting), or nothing."""
    entries = getattr(getattr(report.longrepr, "reprtraceback", None), "reprentries", [])
    places = [
        f"{loc.path}:{loc.lineno}"
        for loc in (getattr(entry, "reprfileloc", None) for entry in entries)
        if loc is not None and "tests" in loc.path.replace("\\", "/").split("/")
    ]
    return f" at {places[-1]}" if places else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Where the reports arrive (the controller, with xdist): note the reruns."""
    if report.when != "call" and not (report.when == "setup" and report.failed):
        return
    for name, why in report.user_properties:
        if name == "port_race_rerun":
            _reruns.append((report.nodeid, f"{report.outcome} on rerun; first run: {why}"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _reruns:
        terminalreporter.section("run again after a kernel lost a port (jupyter_client)")
        for nodeid, what in _reruns:
            terminalreporter.line(f"RERUN {nodeid}: {what}")
