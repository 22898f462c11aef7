"""Variables many runtimes read only while their process starts."""

from __future__ import annotations

#: What the dynamic loader and the C library's character handling read at startup.
LOADER_AND_LOCALE = frozenset(
    {"LD_PRELOAD", "LD_LIBRARY_PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE"}
)

#: The C library's locale and the dynamic loader, and PATH: it picked the kernel's program
#: and the runtime's helpers when the process started, so a request with another PATH
#: gets a kernel started with it.
PROCESS_START = LOADER_AND_LOCALE | frozenset(
    {
        "PATH",
        "LC_COLLATE",
        "LC_MESSAGES",
        "LC_MONETARY",
        "LC_NUMERIC",
        "LC_TIME",
    }
)

#: Thread counts numeric libraries read once, when loaded.
NUMERIC_THREADS = frozenset(
    {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE"}
)
