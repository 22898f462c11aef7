"""``hotpot-km kernelspec install/uninstall``: an existing kernelspec plus the provisioner.

The installed spec is the existing one (argv, env, language, display name,
resources such as logos) with ``metadata.kernel_provisioner`` naming
``hotpot-km-provisioner``; the spec's own provisioner stanza, if it had one,
moves into that stanza's config as ``inner`` and is what cold starts and the
service use. A spec that the install replaces in place is kept inside the new
one (``hotpot_km_original/``, not itself a kernelspec for Jupyter's search) and
put back by ``uninstall``.

Where: by default, the directory whose specs win Jupyter's lookup. In a virtual or
conda environment jupyter_core searches the environment's ``share/jupyter`` before the
user's (``JUPYTER_PREFER_ENV_PATH``, on by default there), where ipykernel put its own
``python3``: a spec in the user's directory would never be found, so the install goes
into the environment's prefix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, _is_valid_kernel_name
from jupyter_core.paths import ENV_JUPYTER_PATH, jupyter_data_dir, jupyter_path

#: The provisioner name that ``hotpot-km kernelspec install`` writes into kernelspecs.
PROVISIONER_NAME = "hotpot-km-provisioner"

#: Marks a kernelspec directory written by this module.
MARKER = "hotpot_km.json"
#: Where a replaced kernelspec waits for ``uninstall``.
BACKUP = "hotpot_km_original"


def unwrap(spec: KernelSpec) -> KernelSpec:
    """The kernelspec as it was before ``hotpot-km kernelspec install``: its own provisioner."""
    stanza = spec.metadata.get("kernel_provisioner") or {}
    if stanza.get("provisioner_name") != PROVISIONER_NAME:
        return spec
    metadata = dict(spec.metadata)
    inner = (stanza.get("config") or {}).get("inner")
    if inner:
        metadata["kernel_provisioner"] = inner
    else:
        metadata.pop("kernel_provisioner")
    data = spec.to_dict()
    data["metadata"] = metadata
    return type(spec)(resource_dir=spec.resource_dir, name=spec.name, **data)


@dataclass(frozen=True)
class Installed:
    """What an install did: where, what it replaced, and what wins the lookup of its name."""

    name: str
    path: str
    wraps: str
    replaced: bool
    resolves_to: str | None


def destination(name: str, prefix: str | None = None, user: bool = False) -> str:
    """``<prefix>/share/jupyter/kernels/<name>``, the user's kernel directory, or (default)
    where a spec of that name wins the lookup."""
    if prefix:
        return os.path.join(os.path.abspath(prefix), "share", "jupyter", "kernels", name)
    return os.path.join(user_kernel_dir() if user else default_kernel_dir(), name)


def user_kernel_dir() -> str:
    return os.path.join(jupyter_data_dir(), "kernels")


def default_kernel_dir() -> str:
    """The user's or this environment's kernel directory, whichever Jupyter searches first.

    The environment's only if this user may write there (jupyter_core prefers it only
    then, too); otherwise the user's, and the install warns if something still wins.
    """
    user = os.path.realpath(user_kernel_dir())
    env = {os.path.realpath(os.path.join(p, "kernels")) for p in ENV_JUPYTER_PATH}
    for path in jupyter_path("kernels"):
        real = os.path.realpath(path)
        if real == user:
            break
        if real in env and _writable(real):
            return path
    return user_kernel_dir()


def _writable(path: str) -> bool:
    """Whether this user can create ``path`` (or write in it)."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.access(path, os.W_OK | os.X_OK)


def installed_path(name: str) -> str | None:
    """The first directory of the kernel search path holding a spec ``name`` installed by
    :func:`install` (the one Jupyter finds), or ``None``."""
    for path in jupyter_path("kernels"):
        candidate = os.path.join(path, name)
        if is_ours(candidate):
            return candidate
    return None


def is_ours(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def _spec_data(resource_dir: str, fallback: dict[str, Any]) -> dict[str, Any]:
    """kernel.json as written (unknown fields kept); the native ipykernel spec has none."""
    path = os.path.join(resource_dir, "kernel.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict):
            return data
    return fallback


def wrapped(data: dict[str, Any], autostart: bool, idle_timeout: float) -> dict[str, Any]:
    """``data`` with the provisioner named; its own provisioner becomes ``inner``."""
    data = json.loads(json.dumps(data))
    metadata = data.setdefault("metadata", {})
    stanza = metadata.get("kernel_provisioner") or {}
    if stanza.get("provisioner_name") == PROVISIONER_NAME:  # installing over our own
        stanza = (stanza.get("config") or {}).get("inner") or {}
    config: dict[str, Any] = {"autostart": autostart, "idle_timeout": idle_timeout}
    if stanza:
        config["inner"] = stanza
    metadata["kernel_provisioner"] = {"provisioner_name": PROVISIONER_NAME, "config": config}
    return data


def install(
    name: str = "python3",
    *,
    prefix: str | None = None,
    user: bool = False,
    as_name: str | None = None,
    autostart: bool = False,
    idle_timeout: float = 600.0,
) -> Installed:
    """Write kernelspec ``as_name`` (default: ``name`` itself, taking its place)."""
    target = (as_name or name).lower()
    if not _is_valid_kernel_name(target):
        raise ValueError(f"invalid kernel name {target!r}")
    ksm = KernelSpecManager()
    spec = ksm.get_kernel_spec(name)
    source = spec.resource_dir
    data = wrapped(_spec_data(source, spec.to_dict()), autostart, idle_timeout)
    dest = destination(target, prefix, user)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".hotpot_km-", dir=os.path.dirname(dest))
    try:
        for entry in os.listdir(source):
            if entry in {"kernel.json", MARKER, BACKUP}:
                continue
            path = os.path.join(source, entry)
            copy = shutil.copytree if os.path.isdir(path) else shutil.copy2
            copy(path, os.path.join(staging, entry))
        with open(os.path.join(staging, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        replaced = False
        if os.path.isdir(dest):
            backup = os.path.join(dest, BACKUP) if is_ours(dest) else dest
            if os.path.isdir(backup):
                shutil.copytree(backup, os.path.join(staging, BACKUP), symlinks=True)
                replaced = True
        wraps = source if not (is_ours(source) and source == dest) else _wrapped_source(dest)
        with open(os.path.join(staging, MARKER), "w", encoding="utf-8") as f:
            json.dump({"wraps": wraps, "replaced": replaced}, f)
        _swap(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    resolves_to = KernelSpecManager().find_kernel_specs().get(target)
    return Installed(target, dest, wraps, replaced, resolves_to)


def _wrapped_source(path: str) -> str:
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            return str(json.load(f).get("wraps", path))
    except (OSError, ValueError):
        return path


def _swap(new: str, dest: str) -> None:
    """Put directory ``new`` at ``dest``, replacing what is there."""
    if os.path.lexists(dest):
        old = tempfile.mkdtemp(prefix=".hotpot_km-old-", dir=os.path.dirname(dest))
        os.rmdir(old)
        os.rename(dest, old)
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, dest)


def uninstall(name: str = "python3", *, prefix: str | None = None, user: bool = False) -> str:
    """Remove a kernelspec written by :func:`install`, putting back the one it replaced.

    Without ``prefix`` or ``user``: the one Jupyter finds first, wherever an install put it."""
    dest = destination(name.lower(), prefix, user)
    if not (prefix or user):
        dest = installed_path(name.lower()) or dest
    if not os.path.isdir(dest):
        raise FileNotFoundError(f"no kernelspec {name!r} at {dest}")
    if not is_ours(dest):
        raise ValueError(f"{dest} was not installed by hotpot-km; left as it is")
    backup = os.path.join(dest, BACKUP)
    if os.path.isdir(backup):
        staging = tempfile.mkdtemp(prefix=".hotpot_km-", dir=os.path.dirname(dest))
        os.rmdir(staging)
        os.rename(backup, staging)
        _swap(staging, dest)
        return f"put back the kernelspec it had replaced at {dest}"
    shutil.rmtree(dest)
    return f"removed {dest}"
