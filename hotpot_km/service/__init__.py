"""The pool service: one more host of the pool engine, serving kernels to other processes.

``hotpot-km serve`` keeps pools of warm kernels (configured exactly like
``PooledKernelManager``) and hands them out over a Unix socket; the
``hotpot-km-provisioner`` kernel provisioner, named in a kernelspec by
``hotpot-km kernelspec install``, asks it for a kernel whenever any Jupyter
client (papermill, nbconvert, nbclient, nbmake, jupyter_server) starts one,
and starts the kernel cold when the service can't serve the request.

Modules, one concern each: :mod:`.paths` (where the socket lives),
:mod:`.protocol` (the wire format), :mod:`.client`, :mod:`.server`,
:mod:`.leases` (kernels owned by other processes), :mod:`.procs` (waiting for
a process through a pidfd), :mod:`.host` (the engine's host), :mod:`.provisioner`,
:mod:`.kernelspec`, :mod:`.autostart`, :mod:`.app` (the ``hotpot-km`` command).
"""
