"""Register everything the service needs on a Prefect server; running it twice changes nothing."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.deployments.runner import EntrypointType
from prefect.events.schemas.automations import AutomationCore
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.schedules import Cron, Interval, RRule, Schedule
from pydantic import SecretStr

from blocks import AwsCredentials, ClusterStateVolume, NodeSshAccess, PolicyService, RkeSettings
from cluster_mgmt.identity import ENVIRONMENT
from cluster_mgmt.patterns import plain_optional_parameters
from cluster_mgmt.preflight import load_private_key
from cluster_mgmt.state import StateVolume
from cluster_mgmt.volume_marker import read_marker

HERE = Path(__file__).resolve().parent
PREFECT_YAML = HERE / "prefect.yaml"
AUTOMATIONS_YAML = HERE / "automations.yaml"
BLOCK_TYPES = (ClusterStateVolume, NodeSshAccess, RkeSettings, PolicyService, AwsCredentials)


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
    """Create the pool with the project's job template, or keep an existing one.

    A worker started with `--pool` creates a missing pool itself, with its type's default
    template; a pool that appears between our read and our create is converged to ours.
    """
    template = json.loads((HERE / "work-pools" / f"{pool_type}.json").read_text())
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            report.kept.append(f"work pool {name}")
            return
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(
                WorkPoolCreate(name=name, type=pool_type, base_job_template=template)
            )
            report.created.append(f"work pool {name} ({pool_type})")
        except ObjectAlreadyExists:  # a worker created it meanwhile, with the default template
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
            report.kept.append(f"work pool {name} (job template set)")


def load_flow(entrypoint: str):
    """The flow object at a module-path entrypoint such as `flows.provision.provision_cluster`."""
    module, _, attribute = entrypoint.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def deployment_specs() -> list[dict]:
    """The deployments declared in prefect.yaml."""
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


def schedules(spec: dict) -> list[Schedule] | None:
    """A prefect.yaml deployment's `schedules` (cron, interval or rrule entries) as Prefect
    schedules: `flow.to_deployment` does not take prefect.yaml's dictionaries."""
    entries = spec.get("schedules")
    if not entries:
        return None
    made = []
    for entry in entries:
        options = {k: entry[k] for k in ("timezone", "active", "parameters", "slug") if k in entry}
        if "cron" in entry:
            made.append(Cron(entry["cron"], day_or=entry.get("day_or", True), **options))
        elif "interval" in entry:
            made.append(
                Interval(entry["interval"], anchor_date=entry.get("anchor_date"), **options)
            )
        elif "rrule" in entry:
            made.append(RRule(entry["rrule"], **options))
        else:
            raise ValueError(
                f"schedule {entry} of {spec['entrypoint']}: use cron, interval or rrule"
            )
    return made


SNAPSHOT_FLOW = "flows.etcd.snapshot_etcd"


def snapshot_schedules(crons: dict[str, str]) -> list[Schedule]:
    """One UTC cron schedule of snapshot-etcd per environment (`{env: cron}`), each snapshotting
    every READY cluster of its environment; ValueError naming a bad environment or cron."""
    made = []
    for environment, cron in sorted(crons.items()):
        ENVIRONMENT.check(environment, "snapshot schedule environment")
        try:
            schedule = Cron(cron, timezone="UTC", slug=f"snapshot-{environment}")
        except ValueError:
            raise ValueError(
                f"snapshot schedule for {environment}: {cron!r} is not a cron expression "
                "(five fields, such as '0 2 * * *')"
            ) from None
        made.append(
            Cron(
                schedule.cron,
                timezone="UTC",
                slug=schedule.slug,
                parameters={"environment": environment},
            )
        )
    return made


def _apply_deployments(
    pool_name: str, report: BootstrapReport, extra: dict[str, list[Schedule]] | None = None
) -> None:
    """Apply prefect.yaml's deployments; `extra` adds schedules by entrypoint."""
    extra = extra or {}
    for spec in deployment_specs():
        flow = load_flow(spec["entrypoint"])
        pool = spec.get("work_pool") or {}
        added = extra.get(spec["entrypoint"], [])
        deployment = flow.to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags"),
            parameters=spec.get("parameters") or {},
            schedules=[*(schedules(spec) or []), *added] or None,
            work_pool_name=pool_name,
            work_queue_name=pool.get("work_queue_name"),
            job_variables=pool.get("job_variables") or {},
            entrypoint_type=EntrypointType.MODULE_PATH,
            enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
        )
        # optional parameters as plain fields in the form (Prefect's `deploy` sets it so too)
        plain_optional_parameters(deployment._parameter_openapi_schema.properties)
        deployment.apply()
        report.kept.append(f"deployment {flow.name}/{spec['name']} (applied)")


def automation_specs(notification_block: str) -> list[AutomationCore]:
    """The automations in automations.yaml, their notifications sent through the block
    `notification_block` (`<block-type-slug>/<name>`, e.g. `custom-webhook/ops-alerts`)."""
    try:
        block_id = Block.load(notification_block)._block_document_id
    except ValueError as exc:
        raise ValueError(
            f"notification block {notification_block!r} cannot be loaded ({exc}); create it "
            "first and name it as <block-type-slug>/<name>"
        ) from None
    specs = yaml.safe_load(AUTOMATIONS_YAML.read_text())["automations"]
    for spec in specs:
        for action in spec["actions"]:
            if action.get("type") == "send-notification":
                action["block_document_id"] = str(block_id)
    return [AutomationCore.model_validate(spec) for spec in specs]


def apply_automations(notification_block: str | None, report: BootstrapReport) -> None:
    """Create or update (by name) the automations that alert through `notification_block`."""
    if not notification_block:
        report.kept.append("automations skipped (no notification block given)")
        return
    with get_client(sync_client=True) as client:
        for automation in automation_specs(notification_block):
            existing = client.read_automations_by_name(automation.name)
            if existing:
                client.update_automation(existing[0].id, automation)
                for duplicate in existing[1:]:
                    client.delete_automation(duplicate.id)
                report.kept.append(f"automation {automation.name} (updated)")
            else:
                client.create_automation(automation)
                report.created.append(f"automation {automation.name}")


def bootstrap(
    values: BlockValues,
    *,
    pool_name: str = "cluster-mgmt",
    pool_type: str = "process",
    overwrite_blocks: bool = False,
    notification_block: str | None = None,
    snapshot_crons: dict[str, str] | None = None,
) -> BootstrapReport:
    """Register block types, create missing default blocks and the work pool, apply deployments
    (snapshot-etcd with one schedule per environment of `snapshot_crons`, `{env: cron}` in UTC)
    and, given a notification block, the alerting automations.

    Existing blocks are kept (operators may have changed them in the UI) unless
    `overwrite_blocks` is set.
    """
    if values.ssh_private_key:
        load_private_key(values.ssh_private_key)  # says what is wrong, never echoes the key
    extra = {SNAPSHOT_FLOW: snapshot_schedules(snapshot_crons or {})}  # checked before changes
    report = BootstrapReport()
    _ensure_blocks(values, report, overwrite_blocks)
    _ensure_work_pool(pool_name, pool_type, report)
    _apply_deployments(pool_name, report, extra)
    apply_automations(notification_block, report)
    return report
