"""Every internal of jupyter_client, jupyter_server and Voila that hotpot_km reaches
(:mod:`hotpot_km.compat`), checked against the installed versions, within the ranges
pyproject.toml declares. A new release that renames one fails here by name, not somewhere
in a restart."""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
from importlib.metadata import requires, version

import pytest
from packaging.requirements import Requirement

from hotpot_km.compat import Internal
from hotpot_km.compat import jupyter_client as client_compat
from hotpot_km.compat import jupyter_server as server_compat
from hotpot_km.compat import voila as voila_compat

INTERNALS = [*client_compat.INTERNALS, *server_compat.INTERNALS, *voila_compat.INTERNALS]


def owner_class(internal: Internal) -> type:
    module, _, name = internal.owner.rpartition(".")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda i: f"{i.owner}.{i.name}")
def test_each_internal_exists_in_the_installed_version(internal: Internal) -> None:
    cls = owner_class(internal)
    if hasattr(cls, internal.name) or internal.name in getattr(cls, "class_traits", dict)():
        return
    assert internal.instance, f"{internal.owner} has no {internal.name}"
    # assigned in the module that defines the owner (or a base class's module)
    pattern = re.compile(rf"\.{re.escape(internal.name)}\b\s*(\[[^\]\n]*\])?\s*\+?=(?!=)")
    sources = {inspect.getsource(inspect.getmodule(base)) for base in cls.__mro__
               if inspect.getmodule(base) is not None and base.__module__ != "builtins"}
    assert any(pattern.search(source) for source in sources), internal


def test_the_documented_uses_cover_every_private_attribute_the_package_reads() -> None:
    """No module outside hotpot_km.compat reaches an attribute listed here directly."""
    import hotpot_km

    names = {internal.name for internal in INTERNALS if internal.only_here}
    root = pathlib.Path(inspect.getfile(hotpot_km)).parent

    offenders = []
    for path in root.rglob("*.py"):
        if "compat" in path.parts or path.name == "fake.py":
            continue
        text = path.read_text()
        for name in names:
            if re.search(rf"[\w)\]]\.{re.escape(name)}\b", text):
                offenders.append(f"{path.name}: .{name}")
    assert offenders == []


def test_in_pending_state_is_still_a_wrapper() -> None:
    """The handout skips jupyter_client's fixed pause only while its start and shutdown are
    decorated the way run_pending reproduces; otherwise it quietly keeps the pause."""
    assert client_compat.UNDECORATED_START is not None
    assert client_compat.UNDECORATED_SHUTDOWN is not None
    source = inspect.getsource(importlib.import_module("jupyter_client.manager").in_pending_state)
    for step in ("_attempted_start", "_ready", "asyncio.sleep(0.01)", "owns_kernel"):
        assert step in source, step


def test_signatures_are_the_ones_called() -> None:
    from jupyter_client.client import KernelClient
    from jupyter_client.manager import KernelManager
    from jupyter_client.multikernelmanager import MultiKernelManager
    from jupyter_server.services.kernels.kernelmanager import MappingKernelManager

    inspect.signature(KernelManager._transport_encryption_policy).bind(None, None)
    inspect.signature(KernelManager._reconcile_connection_info).bind(None, {})
    inspect.signature(KernelManager._close_control_socket).bind(None)
    inspect.signature(MultiKernelManager._check_kernel_id).bind(None, "id")
    inspect.signature(KernelClient._handle_kernel_info_reply).bind(None, {})
    inspect.signature(MappingKernelManager._kernel_start_kwargs).bind(None, cwd="/", env={})


@pytest.mark.parametrize("dependency", ["jupyter_client", "jupyter_server", "voila"])
def test_installed_versions_are_within_the_declared_ranges(dependency: str) -> None:
    declared = [Requirement(r) for r in requires("hotpot-km") or []]
    ranges = [r for r in declared if r.name.replace("-", "_") == dependency]
    assert ranges, f"pyproject.toml declares no range for {dependency}"
    for requirement in ranges:
        assert requirement.specifier.contains(version(dependency)), requirement
        assert any(s.operator == "<" for s in requirement.specifier), (
            f"{requirement}: no upper bound; the internals are checked up to a release only")
