"""The imports of a kernel name's init files, done once in its fork template.

A ``kernel_pool_init_<name>.py`` file runs in every pooled kernel. Its module-level
imports are often most of its cost (numpy, pandas, matplotlib...), so the template
imports those modules too, after ``python_imports``: each forked kernel then finds
them in ``sys.modules`` when its init file runs. Only the module names are taken, by
reading the file with :mod:`ast`, as data; nothing else of the file runs in the
template, and the file itself still runs in each kernel as before.
"""

from __future__ import annotations

import ast
from pathlib import Path

from jupyter_core.paths import jupyter_config_path

#: One import for the template: ``(module, names)``. ``names`` empty: ``import module``;
#: else ``from module import names`` (which imports ``module.name`` where that is a
#: submodule the package does not already have as an attribute).
Import = tuple[str, tuple[str, ...]]

_cache: dict[tuple[str, int, int], tuple[Import, ...]] = {}


def init_file_imports(kernel_name: str) -> tuple[Import, ...]:
    """The module-level imports of ``kernel_pool_init_<kernel_name>.py`` files, in the
    order the kernels run them (Jupyter config path order, then file order). Blocking
    (reads files): call it off the event loop."""
    found: list[Import] = []
    for directory in jupyter_config_path():
        path = Path(directory) / f"kernel_pool_init_{kernel_name}.py"
        try:
            stat = path.stat()
        except OSError:
            continue
        if not path.is_file():
            continue
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        imports = _cache.get(key)
        if imports is None:
            try:
                source = path.read_bytes()
            except OSError:
                continue
            imports = _cache[key] = module_imports(source, str(path))
        found.extend(i for i in imports if i not in found)
    return tuple(found)


def module_imports(source: str | bytes, filename: str = "<init file>") -> tuple[Import, ...]:
    """The absolute imports of ``source``'s top level (not in functions, ``if`` or ``try``);
    nothing for a file that does not parse (its kernels' warm-up reports that)."""
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError):
        return ()
    found: list[Import] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            entries = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level or not node.module or node.module == "__future__":
                continue  # relative (no package to be relative to), or a compiler directive
            entries = [(node.module, tuple(alias.name for alias in node.names))]
        else:
            continue
        for entry in entries:
            if entry not in found:
                found.append(entry)
    return tuple(found)


def describe(imports: tuple[Import, ...]) -> str:
    """``imports`` as statements, for the log."""
    return "; ".join(
        f"from {module} import {', '.join(names)}" if names else f"import {module}"
        for module, names in imports
    )
