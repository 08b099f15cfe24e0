"""What every mutating flow does around its work: settings, locks, status, preflight, the rke
step, failure reporting."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, ParamSpec, get_type_hints

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from pydantic import TypeAdapter, ValidationError

from blocks import ClusterStateVolume, NodeSshAccess, RkeSettings
from blocks.loading import load_block
from cluster_mgmt.driver import RkeDriver
from cluster_mgmt.errors import ClusterMgmtError, RefusedError
from cluster_mgmt.operations import host_key_policy, skipped_nodes
from cluster_mgmt.phases import Operation, Phase
from cluster_mgmt.policy import Decision, PolicyDeniedError
from cluster_mgmt.preflight import HostKeyPolicy, NodeTarget, PreflightReport, load_private_key
from cluster_mgmt.redact import RedactingFilter, redact, register_secret
from cluster_mgmt.state import ClusterNotFoundError, ClusterState, StateVolume, Status
from tasks.locks import cluster_lock
from tasks.policy import validate_policy
from tasks.preflight import NodesUnreachableError, check_nodes
from tasks.reporting import emit_event_for, update_cluster_artifact
from tasks.rke import RkeOutcome, run_rke

P = ParamSpec("P")


@dataclass
class Settings:
    """The blocks a flow runs with, checked before any side effect."""

    rke: RkeSettings
    access: NodeSshAccess
    volume: StateVolume
    driver: RkeDriver

    @property
    def private_key(self) -> str:
        return self.access.private_key.get_secret_value()


def install_redaction() -> None:
    """Put the redaction filter on every logging handler (Prefect's API handler included)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def expected_failures(fn: Callable[P, State]) -> Callable[P, State]:
    """End a flow refused, denied or stopped for a reason the operator can fix with a Failed
    state carrying that one-line reason, not a traceback; anything else still raises.

    Parameters are checked here, so the flow sets `validate_parameters=False`: a value that
    JSON Schema lets through but a validator refuses (two nodes with one address) ends the run
    with the validator's message, where Prefect's own check would log the whole request.
    """
    signature = inspect.signature(fn, eval_str=True)
    hints = get_type_hints(fn, include_extras=True)
    adapters = {name: TypeAdapter(hints[name]) for name in signature.parameters}

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> State:
        try:
            bound = signature.bind(*args, **kwargs)
            problems = []
            for name, value in bound.arguments.items():
                try:
                    bound.arguments[name] = adapters[name].validate_python(value)
                except ValidationError as exc:
                    problems += [_problem(name, error) for error in exc.errors()]
            if problems:
                raise InvalidParametersError(
                    f"invalid parameters, nothing was done: {'; '.join(problems)}"
                )
            return fn(*bound.args, **bound.kwargs)
        except ClusterMgmtError as exc:
            message = redact(str(exc))
            get_run_logger().error("%s", message)
            return Failed(message=message)

    # Prefect reads the parameters from the signature: resolve its annotations where `fn` lives.
    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    return wrapper


class InvalidParametersError(RefusedError):
    """A parameter that its validator refuses; nothing was done."""


def _problem(parameter: str, error: Any) -> str:
    where = ".".join([parameter, *map(str, error["loc"])])
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"


def load_settings(ssh_access: str, state_volume: str, rke_settings: str) -> Settings:
    """Load the blocks and check what can be checked without touching a node or the volume."""
    install_redaction()
    rke = load_block(RkeSettings, rke_settings)
    access = load_block(NodeSshAccess, ssh_access)
    volume = load_block(ClusterStateVolume, state_volume).volume()
    register_secret(access.private_key.get_secret_value())
    load_private_key(access.private_key.get_secret_value())  # says what is wrong, not the key
    driver = rke.driver()
    driver.executable()
    return Settings(rke, access, volume, driver)


def check_policy(
    policy: str,
    kind: str,
    volume: StateVolume,
    environment: str,
    name: str,
    spec: dict,
    operation: Operation,
) -> Decision:
    """validate-policy; a denied operation on an existing cluster is kept in its history too.

    The denial is recorded without the cluster's lock, so it never makes a concurrent
    legitimate run fail as busy.
    """
    decision = validate_policy(policy, kind, environment, name, spec)
    if decision.allowed:
        return decision
    cluster = volume.cluster(environment, name)
    if cluster.exists():
        with suppress(ClusterNotFoundError):  # torn down meanwhile
            cluster.record_decision(operation, decision.to_dict())
    raise PolicyDeniedError(decision)


def current_run_id() -> str:
    return str(flow_run.id or "local")


def finished(cluster: ClusterState, status: Status | None = None, **extra: str) -> State:
    """The run's final state: a small, secret-free summary as its result, and as its message
    so that API clients see it without result persistence."""
    status = status or cluster.read_status()
    result = {
        "environment": cluster.environment,
        "name": cluster.name,
        "phase": status.phase if status else Phase.PENDING,
        "message": status.message if status else "",
        **extra,
    }
    return Completed(message=redact(f"{result['phase']}: {result['message']}"), data=result)


def report_failure(flow: Any, run: Any, state: State) -> None:
    """Flow on_failure hook: `cluster.operation.failed` for every failed operation, including
    those that stopped before touching the cluster (policy, blocks, bad input)."""
    parameters = run.parameters or {}
    spec = parameters.get("spec") or {}
    environment = parameters.get("environment") or spec.get("environment", "default")
    name = parameters.get("name") or spec.get("name")
    if name:
        emit_event_for(
            environment,
            name,
            "cluster.operation.failed",
            {"operation": flow.name, "message": redact(state.message or "")},
        )


@contextmanager
def cluster_operation(
    volume: StateVolume, environment: str, name: str, operation: str, *, create: bool = False
) -> Iterator[ClusterState]:
    """Hold the cluster's Prefect limit and its volume lock; on failure record FAILED.

    Only a provision passes `create`: any other operation on a cluster without a directory
    is ClusterNotFoundError, and creates nothing. A busy lock or a refusal (RefusedError)
    leaves the cluster's status as it was.
    """
    run_id = current_run_id()
    with cluster_lock(environment, name):
        cluster = volume.cluster(environment, name)
        with cluster.lock(operation, run_id, create=create):
            try:
                yield cluster
            except RefusedError:
                raise
            except BaseException as exc:
                message = redact(f"{operation} failed: {exc}")
                try:
                    cluster.write_status(Phase.FAILED, operation, run_id, message)
                    update_cluster_artifact(cluster)
                except Exception as status_error:  # noqa: BLE001 - never hide the first error
                    get_run_logger().error("could not record FAILED: %s", status_error)
                raise


def node_targets(config: dict[str, Any], default_user: str) -> list[NodeTarget]:
    """Where and as whom to log in to each node of a cluster.yml (as rendered or as run)."""
    return [
        NodeTarget(n["address"], int(n.get("port", 22)), n.get("user") or default_user)
        for n in config["nodes"]
    ]


def preflight_nodes(
    settings: Settings,
    cluster: ClusterState,
    targets: list[NodeTarget],
    kubernetes_version: str,
    *,
    retry_unreachable: bool = True,
) -> tuple[PreflightReport, str | None]:
    """ssh-preflight of `targets` under the cluster's host-key policy (`accept-new` falls back
    to `reject` for a cluster that existed and lost its known_hosts); the host keys accepted
    are recorded. Returns the report and why the policy was tightened, if it was."""
    policy_used, why = host_key_policy(cluster, settings.access.policy)
    if why:
        get_run_logger().warning("%s", why)
    access = settings.access.model_copy(update={"host_key_policy": policy_used.value})
    try:
        report = check_nodes(
            targets,
            access,
            cluster.read_text("known_hosts") or "",
            kubernetes_version,
            settings.rke.ignore_docker_version,
            retry_unreachable=retry_unreachable,
        )
    except NodesUnreachableError as exc:  # still unreachable after the retry
        report = exc.report
    cluster.append_known_hosts(report.accepted_host_keys)
    return report, why


def run_rke_step(
    settings: Settings,
    cluster: ClusterState,
    command: str,
    config_text: str,
    *,
    targets: list[NodeTarget],
    rows: list[dict[str, Any]],
    operation: Operation,
    phase: Phase | None,
    message: str = "",
    spec_hash: str | None = None,
    error: type[ClusterMgmtError],
    retry: str,
    detail: Callable[[RkeOutcome], str] | None = None,
    **arguments: Any,
) -> RkeOutcome:
    """One rke command on a cluster, as every flow runs it.

    `phase` with `message` is recorded and shown in the artifact with the preflight `rows`
    (None: the phase stays as it is); `run_rke` runs `command` (its `arguments`: `label`,
    `name`, `services`, `rotate_ca`); a failure is shown in the artifact (`detail(outcome)`,
    else rke's summary) and raised as `error`: "<summary>; fix the cause and <retry>". After
    a success the nodes' host keys are checked again, since rke itself ignores them.
    """
    if phase is not None:
        cluster.write_status(phase, operation, current_run_id(), message, spec_hash)
        update_cluster_artifact(cluster, nodes=rows)
    outcome = run_rke(
        cluster, command, config_text, settings.private_key, settings.driver, **arguments
    )
    if not outcome.result.ok:
        shown = detail(outcome) if detail else outcome.summary
        update_cluster_artifact(cluster, nodes=rows, detail=shown)
        raise error(f"{outcome.summary}; fix the cause and {retry}")
    verify_host_keys(settings, cluster, targets, outcome.result.name)
    return outcome


def check_cluster_nodes(
    cluster: ClusterState,
    settings: Settings,
    config: dict[str, Any],
    *,
    unreachable_ok: bool = False,
) -> tuple[list[NodeTarget], PreflightReport]:
    """Every node's host key, login and Docker checked before rke runs; RefusedError naming
    the nodes that failed. `unreachable_ok`: a node that does not answer is only a warning."""
    targets = node_targets(config, settings.access.user)
    report, why = preflight_nodes(
        settings, cluster, targets, config.get("kubernetes_version", ""), retry_unreachable=False
    )
    for node in skipped_nodes(report, why, unreachable_ok=unreachable_ok):
        get_run_logger().warning(
            "Node %s is unreachable; rke will skip it: %s", node.address, node.error
        )
    return targets, report


def verify_host_keys(
    settings: Settings, cluster: ClusterState, targets: list[NodeTarget], command: str
) -> None:
    """Check each node's host key again after an RKE command: RKE itself ignores host keys,
    so a key that changed during the run fails the operation loudly."""
    logger = get_run_logger()
    access = settings.access.model_copy(update={"host_key_policy": HostKeyPolicy.REJECT.value})
    report = check_nodes(
        targets,
        access,
        cluster.read_text("known_hosts") or "",
        "",
        ignore_docker_version=True,
        retry_unreachable=False,
    )
    changed = [n for n in report.failures if n.reachable]
    for node in report.failures:
        if not node.reachable:
            logger.warning("Node %s unreachable after %s: %s", node.address, command, node.error)
    if changed:
        reasons = "; ".join(f"{n.address}: {n.error}" for n in changed)
        raise ClusterMgmtError(
            f"a node's host key no longer matches after {command} (RKE does not check host "
            f"keys, so it may have talked to another host): {reasons}. Find out why the key "
            "changed before trusting this cluster"
        )


install_redaction()  # also for what is logged before the blocks are loaded
