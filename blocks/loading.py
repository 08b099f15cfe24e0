"""Load a block by name, with an error that says how to create a missing one."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block

from cluster_mgmt.errors import ClusterMgmtError

B = TypeVar("B", bound=Block)


class BlockNotFoundError(ClusterMgmtError, LookupError):
    """A block the flow was told to use does not exist."""


def load_block(block_type: type[B], name: str) -> B:
    """`block_type.load(name)`; a missing block names itself and how to create it."""
    try:
        return block_type.load(name)
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):
            raise
        slug = block_type.get_block_type_slug()
        raise BlockNotFoundError(
            f"block {slug}/{name} does not exist; create it with `cluster-mgmt bootstrap` or in "
            f"the Prefect UI (Blocks → {block_type.get_block_type_name()})"
        ) from None
