"""Octave (octave_kernel): the handout is applied by a function defined for the purpose
and cleared again, so the workspace stays as a cold start leaves it. Octave cannot list
its environment, so the names to clear come from ``env -0`` run by ``system``."""

from __future__ import annotations

from ..languages import Preparation
from .common import NUMERIC_THREADS, PROCESS_START

# The handout's function is defined by the warm-up (octave_kernel sends a cell line by
# line, waiting for each prompt), so the handout itself is one line; the function is
# cleared again after it ran, with the one that runs init steps. The file is removed
# last: the pool takes a file left behind as a failed handout (octave_kernel answers "ok"
# whatever happened).
_BOOTSTRAP = """\
function __hotpot_km_apply__ ()
  path = getenv ("HOTPOT_KM_HANDOUT");
  fid = fopen (path, "r");
  if (fid < 0) error ("hotpot_km: no handout file"); endif
  data = fread (fid, Inf, "uint8=>char")';
  fclose (fid);
  fields = strsplit (data(1:end-1), char (0), "CollapseDelimiters", false);
  [status, current] = system ("env -0");
  if (status != 0) error ("hotpot_km: could not list the environment"); endif
  for entry = strsplit (current(1:end-1), char (0), "CollapseDelimiters", false)
    eq = index (entry{1}, "=");
    if (eq > 1) unsetenv (entry{1}(1:eq-1)); endif
  endfor
  for entry = fields(2:end)
    eq = index (entry{1}, "=");
    setenv (entry{1}(1:eq-1), entry{1}(eq+1:end));
  endfor
  cd (fields{1});
  if (unlink (path) != 0) error ("hotpot_km: could not remove the handout"); endif
endfunction
function __hotpot_km_init__ ()
  path = [getenv("HOTPOT_KM_HANDOUT") ".init"];
  try
    evalin ("base", 'source ([getenv("HOTPOT_KM_HANDOUT") ".init"]);');
  catch err
    fid = fopen (path, "w");
    fputs (fid, err.message);
    fclose (fid);
    return;
  end_try_catch
  unlink (path);
endfunction
__hotpot_km_status__ = system ("env -0 > \\"$HOTPOT_KM_HANDOUT\\"");
if (__hotpot_km_status__ != 0) error ("hotpot_km: could not record the environment"); endif
clear __hotpot_km_status__
"""

_APPLY = "__hotpot_km_apply__ (); clear __hotpot_km_apply__ __hotpot_km_init__\n"

# An init step runs as a script in the base workspace, inside the error handling of a
# function the warm-up defined (octave_kernel answers "ok" whatever failed, and Octave's
# own lasterr also holds errors an init file caught itself).
_RUN_INIT = "__hotpot_km_init__ ()\n"

OCTAVE = Preparation(
    language="octave",
    file_extension=".m",
    bootstrap=_BOOTSTRAP,
    import_modules="",
    apply=_APPLY,
    run_init=_RUN_INIT,
    # `system` runs /bin/sh, which exports the working directory as PWD
    per_process_env=frozenset({"PWD"}),
    startup_env=PROCESS_START
    | NUMERIC_THREADS
    | frozenset(
        {
            # read by octave_kernel and by Octave while it starts
            "HOME",
            "OCTAVE_EXECUTABLE",
            "OCTAVE_CLI_OPTIONS",
            "OCTAVE_KERNEL_JSON",
            "OCTAVE_HOME",
            "OCTAVE_PATH",
            "OCTAVE_SITE_INITFILE",
            "OCTAVE_VERSION_INITFILE",
            "OCTAVE_HISTFILE",
            "OCTAVE_HISTSIZE",
            "DISPLAY",
            "GNUTERM",
            "TMPDIR",
            "XDG_CACHE_HOME",
            "PYTHONPATH",
            "PYTHONHOME",
        }
    ),
)
