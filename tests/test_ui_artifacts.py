"""The per-cluster artifact fits the page: its node table shows short host-key fingerprints and
stays narrow; the full fingerprints are in the detail line below it."""

from __future__ import annotations

from cluster_mgmt.preflight import NodeReport, PreflightReport
from tasks.reporting import FINGERPRINT_CHARS, _nodes_section

# A table row's width in characters that the artifact page shows beside its side panel without
# running into it (the header row is the widest part of an all-ok table).
ROW_WIDTH_LIMIT = 100
KEYS = {
    "10.0.0.1:22": "SHA256:" + "A" * 43,  # ssh-keygen -l: 43 base64 characters
    "[2001:db8::1]:2222": "SHA256:" + "b1/+" * 10 + "xyz",
}


def _section() -> list[str]:
    """The artifact's lines for two nodes (their markdown, one line each)."""
    nodes = tuple(
        NodeReport(
            address=node.rsplit(":", 1)[0].strip("[]"),
            port=int(node.rsplit(":", 1)[1]),
            reachable=True,
            authenticated=True,
            docker_version="24.0.9",
            host_key_fingerprint=key,
            error=None,
        )
        for node, key in KEYS.items()
    )
    markdown = "\n".join(_nodes_section(PreflightReport(nodes=nodes, accepted_host_keys=()).rows()))
    return markdown.splitlines()


def test_the_node_table_shows_short_fingerprints_and_the_detail_line_full_ones():
    lines = _section()
    table = [line for line in lines if line.startswith("|")]
    header, _rule, *rows = ([c.strip() for c in line.strip("|").split("|")] for line in table)
    shown = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    assert set(shown) == set(KEYS)
    for node, key in KEYS.items():
        assert shown[node]["host_key"] == f"{key[: len('SHA256:') + FINGERPRINT_CHARS]}…"
        assert key not in "\n".join(table)
        assert f"- `{node}`: {key}" in lines  # the detail line: the whole fingerprint
    assert max(len(line) for line in table) <= ROW_WIDTH_LIMIT, table
