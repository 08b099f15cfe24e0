"""The Prefect server a benchmark runs against: the embedded one on loopback, quiet, with this
process configured as its client (call before anything imports Prefect)."""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench_server(prefix: str):
    """(an unstarted EmbeddedServer, the benchmark's work directory)."""
    sys.path.insert(0, str(REPO))
    from lab.embedded import EmbeddedServer

    work = Path(tempfile.mkdtemp(prefix=prefix))
    auth = f"bench:{secrets.token_hex(8)}"
    server = EmbeddedServer(
        home=work / "prefect", auth_string=auth, ui=False, cache_dir=REPO / ".lab"
    )
    os.environ |= {
        "PREFECT_API_URL": server.api_url,
        "PREFECT_API_AUTH_STRING": auth,
        "PREFECT_HOME": str(work / "client"),
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    return server, work
