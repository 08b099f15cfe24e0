"""Stand-ins for what cannot run on one machine: nodes (real sshd), `rke`, Docker.

Production code never imports this package; it reaches the lab only through configuration.
"""

import sys
from pathlib import Path


def rke_binary() -> str:
    """Path of the lab's stand-in `rke` executable (installed as `lab-rke`)."""
    return str(Path(sys.executable).parent / "lab-rke")
