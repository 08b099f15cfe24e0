"""Register everything the service needs on a Prefect server; running it twice changes nothing."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.deployments.runner import EntrypointType
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr

from blocks import ClusterStateVolume, NodeSshAccess, PolicyService, RkeSettings
from cluster_mgmt.preflight import load_private_key
from cluster_mgmt.state import StateVolume
from cluster_mgmt.volume_marker import read_marker

HERE = Path(__file__).resolve().parent
PREFECT_YAML = HERE / "prefect.yaml"
BLOCK_TYPES = (ClusterStateVolume, NodeSshAccess, RkeSettings, PolicyService)


@dataclass
class BlockValues:
    """Values for the default blocks; None leaves a field at the block's default."""

    state_root: str | None = None
    ssh_user: str | None = None
    ssh_private_key: str | None = None
    known_hosts: str | None = None
    host_key_policy: str | None = None
    rke_binary: str | None = None
    init_volume: bool = False  # initialise state_root here (the volume is mounted on this host)


@dataclass
class BootstrapReport:
    """What bootstrap created (the rest already existed)."""

    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def _set(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _init_volume(values: BlockValues, report: BootstrapReport) -> str | None:
    """Initialise the state volume at `state_root` when asked; its marker's volume id."""
    if not values.init_volume:
        return None
    if not values.state_root:
        raise ValueError("initialising the state volume needs its root (--state-root)")
    volume = StateVolume(values.state_root)
    fresh = read_marker(volume.root) is None
    marker = volume.initialise()
    label = f"state volume {volume.root} (volume id {marker.volume_id})"
    (report.created if fresh else report.kept).append(label)
    return marker.volume_id


def _record_volume_id(
    block: ClusterStateVolume, root: str, volume_id: str, report: BootstrapReport
) -> None:
    """Pin an existing block naming `root` to the volume just initialised there."""
    if block.volume_id == volume_id or block.volume().root != StateVolume(root).root:
        return
    if block.volume_id is not None:
        raise ValueError(
            f"block cluster-state-volume/default expects volume {block.volume_id}, but the "
            f"volume initialised at {block.root} is {volume_id}; mount the right volume"
        )
    block.volume_id = volume_id
    block.save("default", overwrite=True)
    report.created.append(f"volume id {volume_id} in block cluster-state-volume/default")


def _ensure_blocks(values: BlockValues, report: BootstrapReport, overwrite: bool) -> None:
    for block_type in BLOCK_TYPES:
        block_type.register_type_and_schema()
    volume_id = _init_volume(values, report)
    wanted = {
        ClusterStateVolume: _set({"root": values.state_root, "volume_id": volume_id}),
        RkeSettings: _set({"binary": values.rke_binary}),
        NodeSshAccess: _set(
            {
                "user": values.ssh_user,
                "private_key": SecretStr(values.ssh_private_key)
                if values.ssh_private_key
                else None,
                "known_hosts": values.known_hosts,
                "host_key_policy": values.host_key_policy,
            }
        ),
    }
    for block_type, fields in wanted.items():
        label = f"block {block_type.get_block_type_slug()}/default"
        if not overwrite:
            try:
                existing = block_type.load("default")
            except ValueError:
                pass
            else:
                if volume_id and block_type is ClusterStateVolume:
                    _record_volume_id(existing, values.state_root, volume_id, report)
                report.kept.append(label)
                continue
        if block_type is NodeSshAccess and "private_key" not in fields:
            report.kept.append(f"{label} (not created: give --ssh-key-file)")
            continue
        block_type(**fields).save("default", overwrite=overwrite)
        report.created.append(label)


def _ensure_work_pool(name: str, pool_type: str, report: BootstrapReport) -> None:
    template = json.loads((HERE / "work-pools" / f"{pool_type}.json").read_text())
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            report.kept.append(f"work pool {name}")
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, base_job_template=template)
            )
            report.created.append(f"work pool {name} ({pool_type})")


def load_flow(entrypoint: str):
    """The flow object at a module-path entrypoint such as `flows.provision.provision_cluster`."""
    module, _, attribute = entrypoint.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def deployment_specs() -> list[dict]:
    """The deployments declared in prefect.yaml."""
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def _apply_deployments(pool_name: str, report: BootstrapReport) -> None:
    for spec in deployment_specs():
        flow = load_flow(spec["entrypoint"])
        pool = spec.get("work_pool") or {}
        deployment = flow.to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags"),
            parameters=spec.get("parameters") or {},
            schedules=spec.get("schedules"),
            work_pool_name=pool_name,
            work_queue_name=pool.get("work_queue_name"),
            job_variables=pool.get("job_variables") or {},
            entrypoint_type=EntrypointType.MODULE_PATH,
            enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
        )
        deployment.apply()
        report.kept.append(f"deployment {flow.name}/{spec['name']} (applied)")


def bootstrap(
    values: BlockValues,
    *,
    pool_name: str = "cluster-mgmt",
    pool_type: str = "process",
    overwrite_blocks: bool = False,
) -> BootstrapReport:
    """Register block types, create missing default blocks and the work pool, apply deployments.

    Existing blocks are kept (operators may have changed them in the UI) unless
    `overwrite_blocks` is set.
    """
    if values.ssh_private_key:
        load_private_key(values.ssh_private_key)  # says what is wrong, never echoes the key
    report = BootstrapReport()
    _ensure_blocks(values, report, overwrite_blocks)
    _ensure_work_pool(pool_name, pool_type, report)
    _apply_deployments(pool_name, report)
    return report
