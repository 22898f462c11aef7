"""Fork mode: refill pools by forking a pre-imported template instead of launching.

``PooledKernelManager.fork_from_template`` turns it on per kernel name. See
docs/design.md ("Fork mode") for how a forked kernel is born and owned, and
when fork mode refuses and launches instead.
"""

from .host import ForkedProcess, TemplateError, TemplateKey, TemplateProcess, kernel_command
from .provisioner import ForkProvisioner, TemplateKernelManager
from .templates import Templates

__all__ = [
    "ForkProvisioner",
    "ForkedProcess",
    "TemplateError",
    "TemplateKernelManager",
    "TemplateKey",
    "TemplateProcess",
    "Templates",
    "kernel_command",
]
