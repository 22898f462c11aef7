"""Bash (bash_kernel): the handout is read with ``read -d ''`` (so any byte but NUL
arrives exact) and applied with ``unset``/``export``/``cd`` inside a function that is
removed again; the pool's commands are kept out of the shell's history."""

from __future__ import annotations

from .base import Preparation
from .common import PROCESS_START

# The warm-up's first command turns history off and deletes its own line, so neither the
# pool's commands nor the init file appear in `history` (or ~/.bash_history); it defines
# the handout's function now, so the handout itself is one line (bash_kernel sends a cell
# line by line, waiting for each prompt). The function:
# bash_kernel's own prompt variables keep their values (and are exported only if the
# request's env has them, as a cold start would); PWD is exported and OLDPWD unset as in
# a shell that just started. History comes back on, but bash_kernel's own check of the
# exit status that follows (the next line) is kept out of it by HISTIGNORE, restored at
# the second prompt from now, which then leaves PROMPT_COMMAND empty, as bash_kernel set
# it (bash restores the history switch itself after PROMPT_COMMAND, so it can't be there).
# The file is removed last: the pool takes a file left behind as a failed handout.
_BOOTSTRAP = """\
set +o history; history -d -1 2>/dev/null
__hotpot_km_apply() {
  local __hotpot_km_fd __hotpot_km_cwd __hotpot_km_kv __hotpot_km_k
  local __hotpot_km_file=$HOTPOT_KM_HANDOUT
  exec {__hotpot_km_fd}<"$__hotpot_km_file" || return 1
  IFS= read -r -d '' __hotpot_km_cwd <&"$__hotpot_km_fd" || return 1
  for __hotpot_km_k in $(compgen -e); do
    case $__hotpot_km_k in
      PS1|PS2|PROMPT_COMMAND) export -n "$__hotpot_km_k" ;;
      *) unset -v "$__hotpot_km_k" || return 1 ;;
    esac
  done
  while IFS= read -r -d '' __hotpot_km_kv <&"$__hotpot_km_fd"; do
    case ${__hotpot_km_kv%%=*} in
      PS1|PS2|PROMPT_COMMAND) export "${__hotpot_km_kv%%=*}" ;;
      *) export -- "$__hotpot_km_kv" || return 1 ;;
    esac
  done
  exec {__hotpot_km_fd}<&-
  if [[ -v OLDPWD ]]; then
    __hotpot_km_kv=$OLDPWD
    builtin cd -- "$__hotpot_km_cwd" || return 1
    OLDPWD=$__hotpot_km_kv
  else
    builtin cd -- "$__hotpot_km_cwd" || return 1
    unset -v OLDPWD
  fi
  export PWD
  hash -r
  set -o history
  if [[ -v HISTIGNORE ]]; then
    __hotpot_km_hi=$HISTIGNORE
    PROMPT_COMMAND="PROMPT_COMMAND='HISTIGNORE=\\$__hotpot_km_hi;"
    PROMPT_COMMAND+=" unset -v __hotpot_km_hi; PROMPT_COMMAND='"
  else
    PROMPT_COMMAND="PROMPT_COMMAND='unset -v HISTIGNORE; PROMPT_COMMAND='"
  fi
  HISTIGNORE='{ echo $?; } 2>/dev/null'
  command rm -- "$__hotpot_km_file"
}
env -0 > "$HOTPOT_KM_HANDOUT"
"""

# An init step is sourced with an ERR trap that keeps the first failure, the one `set -e`
# would stop at (bash_kernel looks only at the last command's exit status); a trap the
# init file set itself stays. The shell bash_kernel restarts after an `exit` has not the
# trap's variable, so the file stays and the step counts as failed. The file's name is
# taken before the step runs: a step may change HOTPOT_KM_HANDOUT (the handout then fails).
_RUN_INIT = """\
trap '__hotpot_km_failed=${__hotpot_km_failed-"exit status $?: $BASH_COMMAND"}' ERR
__hotpot_km_trap=$(trap -p ERR) __hotpot_km_init=$HOTPOT_KM_HANDOUT.init
source -- "$__hotpot_km_init"
if [[ $(trap -p ERR) == "$__hotpot_km_trap" ]]; then trap - ERR; fi
if [[ ! -v __hotpot_km_trap ]]; then
  :
elif [[ -v __hotpot_km_failed ]]; then
  printf '%s\\n' "$__hotpot_km_failed" > "$__hotpot_km_init"
else
  command rm -f -- "$__hotpot_km_init"
fi
unset -v __hotpot_km_trap __hotpot_km_failed __hotpot_km_init
"""

_APPLY = "__hotpot_km_apply && unset -f __hotpot_km_apply\n"

BASH = Preparation(
    language="bash",
    file_extension=".sh",
    bootstrap=_BOOTSTRAP,
    import_modules="",
    apply=_APPLY,
    run_init=_RUN_INIT,
    startup_env=PROCESS_START
    | frozenset(
        {
            # read by bash (and its rc files) while the shell starts; SHLVL is counted up
            # from what it inherits
            "HOME",
            "SHLVL",
            "BASH_ENV",
            "ENV",
            "SHELLOPTS",
            "BASHOPTS",
            "HISTFILE",
            "HISTSIZE",
            "HISTFILESIZE",
            "HISTCONTROL",
            "INPUTRC",
            "TERM",
            "PS1",
            "PS2",
            "PROMPT_COMMAND",
            # bash_kernel's own Python process
            "PYTHONPATH",
            "PYTHONHOME",
        }
    ),
)
