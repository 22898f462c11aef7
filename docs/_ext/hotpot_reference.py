"""Reference pages generated from the code at build time, so they cannot drift from it.

``hotpot-config``: every traitlets ``Configurable`` class of hotpot_km (found by importing
the package's modules) with its configurable traits: name, type, default and help, as
``--help-all`` would show them. Traits a class inherits from another hotpot_km class are
listed once, under that class; those of jupyter_client / jupyter_server base classes are
named with the class they come from.

``hotpot-metrics``: the Prometheus metrics of :mod:`hotpot_km.metrics` (the counters and
histograms it registers, and the gauges its collector reports).

``hotpot-status-example``: a status document as :func:`hotpot_km.status.status_document`
writes it, for an example pool.

``hotpot-cold-reasons``: the values of :class:`hotpot_km.request.ColdReason` with their
``#:`` comments.

``hotpot-cli``: the ``hotpot-km`` command's subcommands, their descriptions, examples,
flags and options, from the traitlets applications themselves.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from traitlets import Undefined
from traitlets.config import Configurable

#: Modules that are programs of their own (run by path in a fresh interpreter), not API.
PROGRAMS = {"hotpot_km.__main__", "hotpot_km.keeper", "hotpot_km.fork.template"}


def hotpot_modules() -> list[Any]:
    import hotpot_km

    modules = [hotpot_km]
    for info in pkgutil.walk_packages(hotpot_km.__path__, "hotpot_km."):
        if info.name not in PROGRAMS:
            modules.append(importlib.import_module(info.name))
    return modules


def configurable_classes() -> list[type]:
    """hotpot_km's Configurable classes that have configurable traits of their own."""
    found: dict[str, type] = {}
    for module in hotpot_modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not (issubclass(cls, Configurable) and cls.__module__ == module.__name__):
                continue
            # its own traits, or a host class: hotpot_km's traits on a new base (jupyter_server's
            # AsyncMappingKernelManager for PooledMappingKernelManager)
            if cls.class_own_traits(config=True) or (_hotpot_bases(cls) and _new_base(cls)):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found, key=_order)]


def _hotpot_bases(cls: type) -> list[type]:
    """hotpot_km classes with configurable traits that ``cls`` inherits from."""
    return [
        b
        for b in cls.__mro__[1:]
        if isinstance(b, type)
        and b.__module__.startswith("hotpot_km")
        and issubclass(b, Configurable)
        and b.class_own_traits(config=True)
    ]


def _new_base(cls: type) -> bool:
    """Whether ``cls`` has configurable traits from a non-hotpot_km class that none of its
    hotpot_km bases has."""
    names = set(cls.class_traits(config=True))
    for base in _hotpot_bases(cls):
        names -= set(base.class_traits(config=True))
    return bool(names)


def _order(name: str) -> tuple[int, str]:
    """The classes users configure most first."""
    first = [
        "PooledKernelManager",
        "LimitedKernelManager",
        "PooledMappingKernelManager",
        "PooledGatewayMappingKernelManager",
        "ServeApp",
    ]
    short = name.rsplit(".", 1)[1]
    return (first.index(short) if short in first else len(first), name)


def _default(trait: Any) -> str:
    try:
        value = trait.default()
    except Exception:  # a dynamic default computed by the instance
        value = Undefined
    if value is Undefined or (value is None and not trait.allow_none):
        return "computed at run time"
    text = repr(value)
    return text if len(text) < 200 else text[:197] + "..."


def _type(trait: Any) -> str:
    """The trait's class (``Dict``, ``Float``...), as in a config file's comments."""
    return type(trait).__name__


def _inherited(cls: type) -> list[tuple[str, list[str]]]:
    """Configurable traits from base classes outside hotpot_km, by class."""
    out = []
    seen = set(cls.class_own_traits(config=True))
    for base in cls.__mro__[1:]:
        if not (isinstance(base, type) and issubclass(base, Configurable)):
            continue
        if base.__module__.startswith("hotpot_km"):
            seen |= set(base.class_own_traits(config=True))
            continue
        names = sorted(set(base.class_own_traits(config=True)) - seen)
        seen |= set(names)
        if names:
            out.append((f"{base.__module__}.{base.__qualname__}", names))
    return out


def config_markdown() -> list[str]:
    lines: list[str] = []
    for cls in configurable_classes():
        name = cls.__qualname__
        lines += [f"## {name}", "", f"`{cls.__module__}.{name}`", ""]
        doc = inspect.getdoc(cls)
        if doc:
            lines += [doc.split("\n\n")[0].replace("\n", " "), ""]
        bases = _hotpot_bases(cls)
        if bases:
            links = ", ".join(f"[{b.__qualname__}](#{b.__qualname__.lower()})" for b in bases)
            lines += [f"Also configured by the traits of {links}.", ""]
        for trait_name, trait in sorted(cls.class_own_traits(config=True).items()):
            help_text = " ".join((trait.help or "(no help)").split())
            lines += [
                f"`{name}.{trait_name}`",
                f": *{_type(trait)}*, default `{_default(trait)}`",
                "",
                f"  {help_text}",
                "",
            ]
        for base, names in _inherited(cls):
            listed = ", ".join(f"`{n}`" for n in names)
            lines += [f"Inherited from `{base}` (see its documentation): {listed}.", ""]
    return lines


def metrics_markdown() -> list[str]:
    from prometheus_client.metrics import MetricWrapperBase

    from hotpot_km import metrics

    rows = []
    for _, value in sorted(vars(metrics).items()):
        if isinstance(value, MetricWrapperBase):
            [family] = value.describe()
            suffix = "_total" if family.type == "counter" else ""
            rows.append(
                (family.name + suffix, family.type, value._labelnames, family.documentation)
            )
    for family in metrics.PoolCollector()._families().values():
        labels = tuple(getattr(family, "_labelnames", ()))
        rows.append((family.name, family.type, labels, family.documentation))
    lines = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, kind, labels, doc in sorted(rows):
        label_text = ", ".join(f"`{label}`" for label in labels)
        lines.append(f"| `{name}` | {kind} | {label_text} | {doc} |")
    return [*lines, ""]


def status_example() -> str:
    """The document of an example pool: two kernels, seven warm starts and one cold, one
    failed warm-up, recorded by the same observer a manager uses."""
    from hotpot_km.events import PoolStats
    from hotpot_km.pool.model import PoolSettings
    from hotpot_km.request import ColdReason
    from hotpot_km.snapshot import KernelView, PoolSnapshot, PoolView
    from hotpot_km.status import status_document

    stats = PoolStats()
    for seconds in (0.004, 0.005, 0.006, 0.004, 0.005, 0.007, 0.005):
        stats.kernel_started("python3", pooled=True, reason=None, restart=False, seconds=seconds)
        stats.warmup_succeeded("python3", seconds * 600)
    stats.kernel_started(
        "python3", pooled=False, reason=ColdReason.POOL_EMPTY, restart=False, seconds=0.9
    )
    stats.warmup_failed("python3", "init_file", "ModuleNotFoundError: No module named 'nump'")
    settings = PoolSettings(sizes={"python3": 2}, python_imports=("numpy", "pandas"))
    kernels = (KernelView("ready", 4242, 30.5, 27.1), KernelView("warming", 4250, 1.2, None))
    snapshot = PoolSnapshot(
        pools=(PoolView("python3", 2, kernels, 0, None, None),),
        processes=3,
        max_kernels=0,
        retiring=0,
        settings=settings,
        stats={"python3": stats.for_name("python3")},
        recent_errors=tuple(stats.recent_errors),
        closed=False,
    )
    now = stats.recent_errors[-1].time + 60
    doc = status_document(
        snapshot,
        manager="hotpot_km.mapping.PooledMappingKernelManager",
        kernels_in_use=1,
        now=now,
    )
    return json.dumps(doc, indent=2)


def cold_reasons_markdown() -> list[str]:
    from sphinx.pycode import ModuleAnalyzer

    from hotpot_km.request import ColdReason

    docs = ModuleAnalyzer.for_module("hotpot_km.request").find_attr_docs()
    lines = ["| reason | the start went cold because |", "|---|---|"]
    for member in ColdReason:
        text = " ".join(" ".join(docs.get(("ColdReason", member.name), ["(undocumented)"])).split())
        lines.append(f"| `{member.value}` | {text.replace('``', '`')} |")
    return [*lines, ""]


def _subcommands(app: type, command: str) -> list[tuple[str, type]]:
    out = []
    subcommands = getattr(app, "subcommands", None)
    if not isinstance(subcommands, dict):  # the Application's trait: no subcommands
        return out
    for name, (sub, _) in sorted(subcommands.items()):
        if isinstance(sub, str):
            sub = importlib.import_module(sub.rsplit(".", 1)[0]).__dict__[sub.rsplit(".", 1)[1]]
        out.append((f"{command} {name}", sub))
        out += _subcommands(sub, f"{command} {name}")
    return out


def _text(app: type, name: str) -> str:
    """A class attribute of an Application, or the default of the trait it did not override."""
    value = getattr(app, name, "")
    if not isinstance(value, str):
        value = app.class_traits()[name].default() if name in app.class_traits() else ""
    return inspect.cleandoc(value or "")


def cli_markdown() -> list[str]:
    from jupyter_core.application import base_aliases, base_flags

    from hotpot_km.cli import HotpotKmApp

    lines: list[str] = []
    for command, app in _subcommands(HotpotKmApp, "hotpot-km"):
        lines += [f"## `{command}`", "", " ".join(_text(app, "description").split()), ""]
        examples = _text(app, "examples")
        if examples:
            lines += ["```bash", *examples.splitlines(), "```", ""]
        rows = []
        for flag, (_, help_text) in sorted(app.flags.items()):
            if flag not in base_flags:
                rows.append((f"--{flag}", " ".join(help_text.split())))
        for alias, target in sorted(app.aliases.items()):
            if alias in base_aliases:
                continue
            target = target[0] if isinstance(target, tuple) else target
            cls_name, trait_name = target.split(".")
            trait = app.class_traits()[trait_name] if cls_name == app.__name__ else None
            help_text = " ".join((trait.help if trait else target).split())
            rows.append((f"--{alias}=VALUE", f"{help_text} (`{target}`)"))
        if rows:
            lines += ["| option | meaning |", "|---|---|"]
            lines += [f"| `{opt}` | {text} |" for opt, text in rows]
            lines.append("")
    return lines


class _Generated(SphinxDirective):
    has_content = False

    def markdown(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        text = StringList(self.markdown(), source="(generated from hotpot_km)")
        self.state.nested_parse(text, self.content_offset, container, match_titles=True)
        return container.children


class ConfigDirective(_Generated):
    def markdown(self) -> list[str]:
        return config_markdown()


class MetricsDirective(_Generated):
    def markdown(self) -> list[str]:
        return metrics_markdown()


class StatusExampleDirective(_Generated):
    def markdown(self) -> list[str]:
        return ["```json", *status_example().splitlines(), "```"]


class ColdReasonsDirective(_Generated):
    def markdown(self) -> list[str]:
        return cold_reasons_markdown()


class CliDirective(_Generated):
    def markdown(self) -> list[str]:
        return cli_markdown()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("hotpot-cold-reasons", ColdReasonsDirective)
    app.add_directive("hotpot-cli", CliDirective)
    app.add_directive("hotpot-config", ConfigDirective)
    app.add_directive("hotpot-metrics", MetricsDirective)
    app.add_directive("hotpot-status-example", StatusExampleDirective)
    return {"parallel_read_safe": True, "version": "1"}
