"""What a language's preparation is (:class:`Preparation`) and the handout's message types:
every module of :mod:`hotpot_km.langs` builds on this."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Message type of the handout, sent on the control channel (see :class:`Preparation`).
HANDOUT_REQUEST = "hotpot_km_handout_request"
HANDOUT_REPLY = "hotpot_km_handout_reply"


@dataclass(frozen=True)
class Preparation:
    """How the pool prepares and hands out kernels of one language.

    ``bootstrap`` runs first in every pooled kernel and receives
    ``{"launch_env": ...}``; ``import_modules`` receives ``{"modules": [...]}`` (a language
    whose handout goes through a file gets such data as JSON in the file
    :func:`~hotpot_km.langs.handout.init_path` names instead, and removes it).
    The bootstrap must also install, in the kernel, a handler for
    :data:`HANDOUT_REQUEST` control messages and a gate on the shell channel: until
    the handout is applied, shell requests of anyone but the pool wait. The handout
    carries ``{"cwd": ..., "env": ...}`` (or nothing, meaning the launch's own values;
    ``cwd`` ``None``: where the kernel started) and must make the kernel look as if it
    had been started with them; if applying fails, the kernel must exit at once.
    ``startup_env`` lists variables read only while the process starts (or while the
    warm-up imports run): a request that changes one of them cannot be served by a
    pooled kernel.

    A pooled kernel's process is launched with only the kernelspec's ``env``, the
    ``startup_env`` variables of the pool's env and, for a program found on the
    ``PATH``, ``PATH`` (:func:`hotpot_km.request.launch_env`); the bootstrap's
    ``launch_env`` is exactly that. The handout's ``env`` is the request's whole final
    env, a superset of ``launch_env`` with equal values: the handout replaces the
    kernel's environment with it, keeps what the kernel itself set or removed while
    starting (compared with ``launch_env``), and makes the language's runtime see the
    change (Python: ``os.environ``, ``time.tzset()``, ``tempfile``'s cached directory),
    so children it spawns get it too.
    """

    language: str
    file_extension: str
    bootstrap: str
    import_modules: str
    startup_env: frozenset[str] = field(default_factory=frozenset)
    #: Constant code run (silently, on the shell channel) at handout by kernels that can't
    #: receive a control message: the pool runs it before the host gets the kernel, with the
    #: request's values in a file (see :mod:`hotpot_km.langs.handout`). Empty: the
    #: control-message handout above.
    apply: str = ""
    #: The kernelspec ``language`` this preparation serves, when it is not ``language``
    #: itself (xeus-python's kernelspec says ``python``).
    spec_language: str | None = None
    #: Basenames of which one must be in the kernelspec's ``argv`` (its program or module,
    #: e.g. ``xpython_launcher``) for this preparation to serve it; empty: any kernel of
    #: ``spec_language``.
    executables: frozenset[str] = field(default_factory=frozenset)
    #: Variables the bootstrap's view of the environment shows that the kernel itself does
    #: not hold (e.g. a shell's ``PWD`` when the dump goes through ``/bin/sh``).
    per_process_env: frozenset[str] = field(default_factory=frozenset)
    #: Whether the pool runs init code (``initialization_code``, init files) silently. Off
    #: for kernels that report an error only to code that is not silent (IRkernel answers
    #: ``ok`` to silent code that failed); history is never stored either way.
    init_silent: bool = True
    #: Constant code that runs one init step for kernels that answer ``ok`` to code that
    #: failed (bash_kernel looks only at the last command's status, octave_kernel at
    #: nothing): the pool writes the step's code to :func:`~hotpot_km.langs.handout.init_path`
    #: of the handout file, and this code runs it in the user's namespace, then removes the
    #: file if it ran without error, or writes why it failed there instead. A file still
    #: there after the reply fails the warm-up. Only for :attr:`handout_by_file` languages;
    #: empty: the init code runs as it is and the reply's status tells.
    run_init: str = ""
    #: Whether :attr:`bootstrap` and :attr:`apply` exchange their data with the pool through
    #: input requests (the stdin channel) instead of a file: for kernels on another machine
    #: (a remote gateway). The bootstrap asks for input with the kernel's environment for
    #: its prompt (the pool answers an empty line); :attr:`apply` asks for one line and gets
    #: the cwd (empty: stay) and the new environment. Both are the handout file's fields, as
    #: a JSON list of base64 strings. Both run silently or not as :attr:`init_silent` says,
    #: so that an error is reported.
    stdin: bool = False
    #: For :attr:`stdin` kernels that read their input through a terminal (octave_kernel),
    #: whose lines hold at most 4095 bytes: the pool answers :attr:`apply` in lines of at
    #: most this many characters, then an empty line, which the code concatenates. 0: one
    #: line, whatever its length.
    stdin_line_max: int = 0
    #: For :attr:`stdin` kernels that answer ``ok`` to code that failed (octave_kernel): the
    #: prompt of the input request :attr:`apply` makes as its last step, once everything is
    #: applied; a handout that never asks it failed. Empty: the reply's status tells.
    stdin_done: str = ""
    #: For kernels that make their interpreter on the first ``kernel_info_request`` of any
    #: of their threads (octave_kernel 1.1: ipykernel 7 answers control in a thread of its
    #: own), so that two at once, on shell and control (jupyter_server's websocket asks so
    #: when it connects), make two, and the next cell may run in the one not set up (where
    #: octave_kernel's ``input()`` hangs for good). Before the pool runs code in such a
    #: kernel that a gateway restarted, it waits for an answer on both channels: each
    #: thread has then made its own, and no other comes. Off for kernels that ignore
    #: ``kernel_info`` on control (IRkernel).
    info_on_control: bool = False
    #: The ``language`` of the preparation that serves this language's kernels on a remote
    #: gateway, where the handout file can't reach them (one with :attr:`stdin`); ``None``:
    #: such kernels serve only requests with the pool's own cwd/env there.
    remote: str | None = None

    @property
    def handout_by_file(self) -> bool:
        """Whether the handout is the :attr:`apply` code and a file, not a control message."""
        return bool(self.apply) and not self.stdin

    def serves(self, language: str | None, argv: Sequence[str]) -> bool:
        """Whether kernels of a kernelspec with this ``language`` and ``argv`` are prepared here."""
        if (language or "").lower() != (self.spec_language or self.language).lower():
            return False
        return not self.executables or any(
            os.path.basename(arg) in self.executables for arg in argv
        )
