"""R (IRkernel): the handout file is read with ``readBin`` and applied with ``setwd``,
``Sys.unsetenv`` and ``Sys.setenv``, everything inside ``local()`` so no variable is left
in the global environment, in an environment whose parent is base's, so that names an
init file defines in the global environment can't stand in for base's functions."""

from __future__ import annotations

import dataclasses

from .base import Preparation
from .common import NUMERIC_THREADS, PROCESS_START

_BOOTSTRAP = """\
base::local({
  env <- Sys.getenv()
  con <- file(Sys.getenv("HOTPOT_KM_HANDOUT"), "wb")
  on.exit(close(con))
  for (key in names(env)) {
    writeBin(c(charToRaw(paste0(key, "=", env[[key]])), as.raw(0L)), con)
  }
  invisible(NULL)
}, envir = base::new.env(parent = base::baseenv()))
"""

# Both handouts' last part: the environment becomes the handout's fields (raw vectors
# "KEY=value", after the cwd's).
_SET_ENV = """\
  if (!all(Sys.unsetenv(names(Sys.getenv())))) stop("could not clear the environment")
  for (field in fields[-1L]) {
    eq <- match(as.raw(61L), field)
    value <- list(rawToChar(field[-seq_len(eq)]))
    names(value) <- rawToChar(field[seq_len(eq - 1L)])
    if (!do.call(Sys.setenv, value)) stop("could not set ", names(value))
  }
"""

_APPLY = (
    """\
base::local({
  path <- Sys.getenv("HOTPOT_KM_HANDOUT")
  data <- readBin(path, "raw", file.info(path)$size)
  ends <- which(data == as.raw(0L))
  starts <- c(1L, ends[-length(ends)] + 1L)
  fields <- lapply(seq_along(ends), function(i) data[seq_len(ends[i] - starts[i]) + starts[i] - 1L])
  setwd(rawToChar(fields[[1L]]))
"""
    + _SET_ENV
    + """\
  if (!file.remove(path)) stop("could not remove the handout")
  invisible(NULL)
}, envir = base::new.env(parent = base::baseenv()))
"""
)

R = Preparation(
    language="r",
    file_extension=".R",
    bootstrap=_BOOTSTRAP,
    import_modules="",
    apply=_APPLY,
    # IRkernel drops the error of silent code and answers "ok"
    init_silent=False,
    remote="r (gateway)",
    startup_env=PROCESS_START
    | NUMERIC_THREADS
    | frozenset(
        {
            # read by the R front end and R's start-up (Renviron, profiles, library paths);
            # the front end is a shell script, which counts SHLVL up from what it inherits
            "SHLVL",
            "R_HOME",
            "R_ARCH",
            "R_SHARE_DIR",
            "R_INCLUDE_DIR",
            "R_DOC_DIR",
            "R_LIBS",
            "R_LIBS_USER",
            "R_LIBS_SITE",
            "R_ENVIRON",
            "R_ENVIRON_USER",
            "R_PROFILE",
            "R_PROFILE_USER",
            "R_DEFAULT_PACKAGES",
            "R_MAX_VSIZE",
            "R_MAX_NUM_DLLS",
            "R_ENABLE_JIT",
            "R_KEEP_PKG_SOURCE",
            "R_HISTFILE",
            "R_HISTSIZE",
            # the session's temporary directory and the home directory R caches for `~`
            "TMPDIR",
            "TMP",
            "TEMP",
            "HOME",
        }
    ),
)

# On a remote gateway the pool can't share a file with the kernel: the same exchange goes
# through IRkernel's readline(), which sends an input request on the stdin channel. The
# bootstrap's prompt is the environment, the handout's one line of input the cwd and the
# new environment: JSON lists of base64 fields (the handout file's fields, whatever the
# locale's encoding; jsonlite comes with IRkernel), parsed, never evaluated.
_STDIN_BOOTSTRAP = """\
base::local({
  env <- Sys.getenv()
  fields <- vapply(names(env), function(key) {
    jsonlite::base64_enc(charToRaw(paste0(key, "=", env[[key]])))
  }, "", USE.NAMES = FALSE)
  base::readline(base::as.character(jsonlite::toJSON(fields)))
  invisible(NULL)
}, envir = base::new.env(parent = base::baseenv()))
"""

_STDIN_APPLY = (
    """\
base::local({
  fields <- lapply(jsonlite::fromJSON(base::readline()), jsonlite::base64_dec)
  if (length(fields[[1L]])) setwd(rawToChar(fields[[1L]]))
"""
    + _SET_ENV
    + """\
  invisible(NULL)
}, envir = base::new.env(parent = base::baseenv()))
"""
)

#: R kernels on a remote gateway: the handout's data through the stdin channel.
R_GATEWAY = dataclasses.replace(
    R,
    language="r (gateway)",
    bootstrap=_STDIN_BOOTSTRAP,
    apply=_STDIN_APPLY,
    stdin=True,
    remote=None,
)
