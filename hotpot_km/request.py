"""What a kernel start asks for, and whether a pooled kernel can honour it.

A pooled kernel was launched before the request existed. Its working directory
and environment can be changed afterwards (see :mod:`hotpot_km.languages`);
every other start argument cannot, and neither can variables a process only
reads while starting.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.provisioning import KernelProvisionerBase, LocalProvisioner

from .languages import preparation_for

#: Start arguments the pool applies to a kernel after it started.
APPLIED_AFTER_START = frozenset({"cwd", "env", "kernel_id", "path"})


@dataclass(frozen=True)
class LaunchRequest:
    """A start request in the form the pool compares: final env, absolute cwd.

    ``cwd`` is ``None`` where the launcher, not the request, decides it (a gateway
    without mirrored working directories): the kernel stays where it started.
    """

    kernel_name: str
    cwd: str | None
    env: Mapping[str, str]
    options: Mapping[str, Any] = field(default_factory=dict)
    encryption: str = "disabled"
    #: whether a pooled kernel's process holds ``env`` as its own environment block (a
    #: local launch): then it only serves requests whose env contains all of ``env``. A
    #: remote gateway decides its kernels' process env itself (``False``).
    process_env: bool = True
    #: a pooled kernel's whole final env, of which only ``env`` is in its process: its
    #: warm-up code (imports, init files) sees the rest in ``os.environ`` alone, as it would
    #: in a process launched with it, until the handout replaces it with the request's
    warmup_env: Mapping[str, str] = field(default_factory=dict, compare=False)


def fixed_options(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The start arguments that cannot change once a kernel runs (``extra_arguments``, ...).

    ``transport_encryption`` is compared separately, as the policy it resolves to; an
    empty ``extra_arguments`` (nbclient always passes one) is the same launch as none.
    """
    return {
        k: v
        for k, v in kwargs.items()
        if k not in APPLIED_AFTER_START
        and k != "transport_encryption"
        and not (k == "extra_arguments" and not v)  # none is the same launch as []
    }


def plain_env(env: Mapping[Any, Any]) -> dict[str, str]:
    """Validate an env mapping and return it with plain ``str`` keys and values.

    Keys may be ``str`` subclasses (Voila uses enums); what a process can't hold
    raises the same kind of error a cold start's ``Popen`` would, with the key named.
    """
    out: dict[str, str] = {}
    for key, value in env.items():
        if not isinstance(key, str):
            raise TypeError(f"environment variable names must be str, not {type(key).__name__}")
        if not isinstance(value, str):
            kind = type(value).__name__
            raise TypeError(f"environment variable {str.__str__(key)!r} must be a str, not {kind}")
        name = str.__str__(key)
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"illegal environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {name!r} contains a NUL byte")
        out[name] = str.__str__(value)
    return out


def absolute_cwd(cwd: str | os.PathLike[str] | None) -> str:
    """The working directory a start gets, absolute; whether it exists is the launch's to find.

    A path object is accepted as ``Popen`` accepts it (nbmake passes one).
    """
    if cwd is None:
        return os.getcwd()
    cwd = os.fspath(cwd)
    if "\0" in cwd:
        raise ValueError("the kernel working directory contains a NUL byte")
    return os.path.abspath(cwd)


async def final_env(
    spec: KernelSpec, env: Mapping[str, str] | None, via: KernelProvisionerBase | None = None
) -> dict[str, str]:
    """The env a cold start of ``spec`` would give its process, as jupyter_client computes it.

    That is the request's env (or this process's), with the kernelspec's ``env``
    templates substituted over it and the provisioner's final adjustments.
    """
    probe = via or LocalProvisioner(kernel_id="", kernel_spec=spec, parent=None)
    kwargs = await KernelProvisionerBase.pre_launch(
        probe, env=dict(os.environ if env is None else env)
    )
    return plain_env(kwargs["env"])


def launch_program(spec: KernelSpec) -> str:
    """The program a launch of ``spec`` runs, as jupyter_client resolves ``python``."""
    program = spec.argv[0] if spec.argv else ""
    major, minor = sys.version_info[:2]
    return (
        sys.executable
        if program in {"python", f"python{major}", f"python{major}.{minor}"}
        else program
    )


def launch_env(
    env: Mapping[str, str], spec_env: Mapping[str, str], language: str | None, program: str
) -> dict[str, str]:
    """The part of a pooled kernel's final ``env`` its process is launched with.

    A pooled kernel is launched before any request, so its process's own environment
    block (``/proc/<pid>/environ``, what children inherit unless changed) must hold
    nothing a request might not carry: only what must be fixed at process start. That
    is the kernelspec's ``env``, the language's ``startup_env`` variables and, for a
    program looked up on the ``PATH``, ``PATH``. Everything else comes with the handout.
    A language the pool can't hand out to keeps its whole env (it only serves requests
    with that very env).
    """
    prep = preparation_for(language)
    if prep is None:
        return dict(env)
    keep = set(spec_env) | prep.startup_env
    if os.sep not in program:
        keep.add("PATH")
    return {k: v for k, v in env.items() if k in keep}


def utf8_clean(text: str) -> bool:
    """Whether ``text`` survives JSON as UTF-8 (no lone surrogates from undecodable bytes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ColdReason(str, Enum):
    """Why a start did not get a pooled kernel: a small, fixed vocabulary.

    The values are the ``reason`` label of the metrics and appear in the status
    document, so they are part of the public interface: add, never rename.
    """

    #: the kernel name has no pool (not in ``kernel_pools``, or size 0), or no kernelspec
    NO_POOL = "no_pool"
    #: the pool had no kernel to give (all taken; a restart found none ready)
    POOL_EMPTY = "pool_empty"
    #: an env variable read only at process start differs (``PYTHONPATH``, ``LANG``, ...)
    STARTUP_ENV = "startup_env"
    #: start arguments other than cwd/env differ from ``pool_kwargs`` (or transport encryption)
    START_ARGUMENTS = "start_arguments"
    #: a cwd/env change the pool can't apply to kernels of this language
    LANGUAGE = "language"
    #: the pool's warm-ups are failing, so it has nothing ready
    WARMUP_FAILING = "warmup_failing"
    #: the pooled kernel it got had died
    DEAD_KERNEL = "dead_kernel"
    #: applying cwd/env to the pooled kernel failed
    HANDOUT_FAILED = "handout_failed"
    #: the pooled kernel's process was launched with a variable (from the kernelspec's
    #: ``env``, or the program's lookup ``PATH``) that the request lacks or sets otherwise
    LAUNCH_ENV = "launch_env"
    #: the pool's kernel was still warming after as long as a cold start takes
    WARMUP_SLOW = "warmup_slow"
    #: the request's cwd or env holds text that is not UTF-8 (it can't travel to the kernel
    #: as JSON exactly), e.g. bytes decoded with ``surrogateescape``
    NOT_UTF8 = "not_utf8"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Mismatch:
    """Why a pooled kernel can't serve a request: a :class:`ColdReason` and the details."""

    reason: ColdReason
    detail: str

    def __str__(self) -> str:
        return self.detail


def mismatch(
    pooled: LaunchRequest, language: str | None, request: LaunchRequest
) -> Mismatch | None:
    """Why a kernel launched for ``pooled`` can't serve ``request``, or ``None`` if it can."""
    if pooled.kernel_name != request.kernel_name:
        return Mismatch(ColdReason.NO_POOL, "another kernel name")
    if pooled.encryption != request.encryption:
        return Mismatch(ColdReason.START_ARGUMENTS, "another transport encryption")
    if dict(pooled.options) != dict(request.options):
        keys = sorted(set(pooled.options) ^ set(request.options)) or sorted(
            k for k in request.options if pooled.options.get(k) != request.options[k]
        )
        detail = f"start arguments that differ from pool_kwargs: {', '.join(keys)}"
        return Mismatch(ColdReason.START_ARGUMENTS, detail)
    prep = preparation_for(language)
    if prep is None:
        if pooled.cwd != request.cwd or dict(pooled.env) != dict(request.env):
            detail = (
                f"a cwd/env change, which the pool can't apply to {language or 'unknown'} kernels"
            )
            return Mismatch(ColdReason.LANGUAGE, detail)
        return None
    changed = sorted(k for k in prep.startup_env if pooled.env.get(k) != request.env.get(k))
    if changed:
        detail = f"env variables read only at process start: {', '.join(changed)}"
        return Mismatch(ColdReason.STARTUP_ENV, detail)
    # The kernel's process keeps the env it was launched with (``/proc/self/environ``):
    # a request may only get it if that env is part of its own, value for value.
    other = sorted(k for k, v in pooled.env.items() if request.env.get(k) != v)
    if other and pooled.process_env:
        detail = f"env variables the pooled kernel was launched with: {', '.join(other)}"
        return Mismatch(ColdReason.LAUNCH_ENV, detail)
    unclean = [k for k, v in request.env.items() if not (utf8_clean(k) and utf8_clean(v))]
    if unclean or (request.cwd is not None and not utf8_clean(request.cwd)):
        what = "the working directory" if not unclean else "env variables"
        return Mismatch(ColdReason.NOT_UTF8, f"{what} with text that is not UTF-8")
    return None
