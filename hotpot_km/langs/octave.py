"""Octave (octave_kernel): the handout is applied by a function defined for the purpose
and cleared again, so the workspace stays as a cold start leaves it. Octave cannot list
its environment, so the names to clear come from ``env -0`` run by ``system``."""

from __future__ import annotations

import dataclasses

from .base import Preparation
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
    remote="octave (gateway)",
    info_on_control=True,
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

# On a remote gateway the pool can't share a file with the kernel: the same exchange goes
# through input(prompt, "s"), which octave_kernel forwards as an input request on the stdin
# channel (R's way, langs/r.py). The bootstrap's prompt is the environment, the handout's
# input the cwd and the new environment: JSON lists of base64 fields, parsed with
# jsondecode, never evaluated. octave_kernel hands the reply to Octave through a terminal,
# whose lines hold 4095 bytes: the pool sends the data in lines of 1000 characters, then an
# empty line. octave_kernel answers "ok" whatever failed, so the handout's last step asks
# for one more line, which only a handout that applied everything reaches. A prompt must not
# be empty (octave_kernel would not see it).
_STDIN_DONE = "hotpot_km_applied"

_STDIN_BOOTSTRAP = f"""\
function __hotpot_km_apply__ ()
  text = "";
  do
    line = input ("hotpot_km>", "s");
    text = [text line];
  until (isempty (line))
  encoded = jsondecode (text);
  fields = repmat ({{""}}, 1, numel (encoded));
  for i = 1:numel (encoded)
    if (! isempty (encoded{{i}})) fields{{i}} = char (matlab.net.base64decode (encoded{{i}})); endif
  endfor
  [status, current] = system ("env -0");
  if (status != 0) error ("hotpot_km: could not list the environment"); endif
  for entry = strsplit (current(1:end-1), char (0), "CollapseDelimiters", false)
    eq = index (entry{{1}}, "=");
    if (eq > 1) unsetenv (entry{{1}}(1:eq-1)); endif
  endfor
  for entry = fields(2:end)
    eq = index (entry{{1}}, "=");
    setenv (entry{{1}}(1:eq-1), entry{{1}}(eq+1:end));
  endfor
  if (! isempty (fields{{1}})) cd (fields{{1}}); endif
  input ("{_STDIN_DONE}", "s");
endfunction
function __hotpot_km_dump__ ()
  [status, env] = system ("env -0");
  if (status != 0) error ("hotpot_km: could not list the environment"); endif
  fields = strsplit (env(1:end-1), char (0), "CollapseDelimiters", false);
  fields = cellfun (@(f) matlab.net.base64encode (uint8 (f)), fields, "UniformOutput", false);
  input (jsonencode (fields), "s");
endfunction
__hotpot_km_dump__ (); clear __hotpot_km_dump__
"""

#: Octave kernels on a remote gateway: the handout's data through the stdin channel. An
#: init step runs there as it is (the file of :attr:`OCTAVE.run_init` can't reach the
#: kernel): octave_kernel answers "ok" to it whatever failed.
OCTAVE_GATEWAY = dataclasses.replace(
    OCTAVE,
    language="octave (gateway)",
    bootstrap=_STDIN_BOOTSTRAP,
    apply="__hotpot_km_apply__ (); clear __hotpot_km_apply__\n",
    run_init="",
    stdin=True,
    stdin_line_max=1000,
    stdin_done=_STDIN_DONE,
    remote=None,
)
