"""The form refuses what the run would refuse: the deployments' parameter schemas carry the spec's
rules, the Prefect server enforces them before a flow run exists, and they agree with pydantic."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import PrefectHTTPStatusError
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import validate
from pydantic import ValidationError

from cluster_mgmt import spec as spec_module
from cluster_mgmt.identity import CLUSTER_REF, ENVIRONMENT, NAME
from cluster_mgmt.manifests import MAX_MANIFEST_BYTES, RESOURCE_NAME
from cluster_mgmt.patterns import BLOCK_NAME, RUN_ID, TextRule, plain_optional_parameters
from cluster_mgmt.recovery import HISTORY_ENTRY
from cluster_mgmt.snapshots import SNAPSHOT_NAME
from cluster_mgmt.spec import ADDRESS_SCHEMA, ClusterSpec
from deployments.bootstrap import (
    SNAPSHOT_FLOW,
    BootstrapReport,
    _apply_deployments,
    _ensure_work_pool,
    deployment_specs,
    load_flow,
    snapshot_schedules,
)
from flows.provision import provision_cluster
from flows.teardown import teardown_cluster

NODE = {"address": "10.0.0.1", "roles": ["controlplane", "etcd", "worker"]}
PROVISION_SCHEMA = parameter_schema(provision_cluster.fn).model_dump_for_openapi()
TEARDOWN_SCHEMA = parameter_schema(teardown_cluster.fn).model_dump_for_openapi()


def with_spec(**fields) -> dict:
    return {"name": "web", "nodes": [NODE], **fields}


def with_node(**fields) -> dict:
    return with_spec(nodes=[{**NODE, **fields}])


def taint(key="dedicated", value="", effect="NoSchedule") -> dict:
    return {"key": key, "value": value, "effect": effect}


def hosts(count: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(count)]


# (request, valid): the schema and pydantic give the same verdict on each.
AGREE = [
    (with_spec(), True),
    (ClusterSpec(**with_spec()).model_dump(mode="json"), True),  # what the CLI sends, nulls too
    ({"name": "web", "hosts": ["10.0.0.1", "node-2.example.com"]}, True),
    ({"name": "web", "hosts": ["10.0.0.1"], "nodes": None}, True),
    ({"name": "web", "hosts": ["10.0.0.1"], "nodes": [NODE]}, False),
    ({"name": "web"}, False),
    ({"name": "web", "hosts": []}, False),
    ({"name": "web", "hosts": hosts(101)}, False),
    ({"name": "web", "hosts": ["10.0.0.1", "10.0.0.1"]}, False),
    (with_spec(surprise=1), False),
    (with_spec(name="Bad_Name"), False),
    (with_spec(name="web\n"), False),
    (with_spec(name="-web"), False),
    (with_spec(name="w" * 40), True),
    (with_spec(name="w" * 41), False),
    (with_spec(name=""), False),
    (with_spec(environment="e" * 20), True),
    (with_spec(environment="e" * 21), False),
    (with_spec(environment="prod-eu"), False),
    (with_spec(environment="Prod"), False),
    (with_spec(kubernetes_version="v1.30.5-rancher1-1"), True),
    (with_spec(kubernetes_version="1.30"), False),
    (with_spec(kubernetes_version="v\u0661.30.5-rancher1-1"), False),
    (with_spec(network_plugin="cilium"), False),
    (with_spec(etcd_snapshots={"interval_hours": 25}), False),
    (with_spec(customer={"namespace": "team-a", "access": "namespace-admin"}), True),
    (with_spec(customer={"namespace": "Team"}), False),
    (with_spec(customer={"access": "root"}), False),
    (with_node(roles=["boss"]), False),
    (with_node(roles=[]), False),
    (with_node(roles=["etcd", "etcd", "controlplane", "worker"]), False),
    (with_node(port=0), False),
    (with_node(address="fe80::1"), True),
    (with_node(address="::ffff:10.0.0.1"), True),
    (with_node(address="fe80::1%eth0"), False),
    (with_node(address="node-1.example.com"), True),
    (with_node(address="1.2.3.999"), False),
    (with_node(address="010.0.0.1"), False),
    (with_node(address="my_host"), False),
    (with_node(address=" 10.0.0.1"), False),
    (with_node(address="10.0.0.1\n"), False),
    (with_node(address="a" * 64 + ".example"), False),
    (with_node(internal_address="192.168.0.1"), True),
    (with_node(internal_address=None), True),
    (with_node(internal_address="fe80::2%eth0"), False),
    (with_node(internal_address="10.0.0.2,etcd-x=https://x"), False),
    (with_node(hostname_override="node-1.example.com"), True),
    (with_node(hostname_override="Node-1"), False),
    (with_node(hostname_override="a" * 254), False),
    (with_node(user="rke_user-1"), True),
    (with_node(user="root\n"), False),
    (with_node(user="Root"), False),
    (with_node(labels={"tier": "", "example.com/tier": "Web_1.a-b"}), True),
    (with_node(labels={"a" * 253 + "/" + "n" * 63: "v" * 63}), True),
    (with_node(labels={"a" * 254 + "/tier": "v"}), False),
    (with_node(labels={"/tier": "x"}), False),
    (with_node(labels={"Example.com/tier": "x"}), False),
    (with_node(labels={"a/b/c": "x"}), False),
    (with_node(labels={"x" * 64: "y"}), False),
    (with_node(labels={"tier": "-x"}), False),
    (with_node(labels={"tier": "x" * 64}), False),
    (with_node(labels={"tier": 1}), False),
    (with_node(taints=[taint(), taint("example.com/gpu", "yes", "NoExecute")]), True),
    (with_node(taints=[taint(effect="Sometimes")]), False),
    (with_node(taints=[taint(key="bad key")]), False),
    (with_node(taints=[taint(value="a b")]), False),
]

# What JSON Schema cannot say: the schema lets these through, the flow's validation refuses them
# when the run starts, before any side effect.
PYTHON_ONLY = [
    with_spec(nodes=[NODE, NODE]),  # duplicate addresses
    with_spec(nodes=[{**NODE, "address": "10.0.0.2"}, {**NODE, "address": "A.example"}]),
    with_spec(nodes=[{**NODE, "roles": ["controlplane", "etcd"]}]),  # no worker
    {"name": "web", "hosts": ["a.example", "A.example"]},  # the same host, differently spelt
    with_spec(etcd_snapshots={"interval_hours": 12, "retention_hours": 6}),
    with_node(address="1:::2"),  # IPv6 syntax is parsed by ipaddress, not by a regex
]


def schema_accepts(schema: dict, parameters: dict) -> bool:
    """The Prefect server's verdict (the same check `create_flow_run_from_deployment` runs)."""
    return not validate(parameters, schema, raise_on_error=False)


def pydantic_accepts(request: dict) -> bool:
    try:
        ClusterSpec.model_validate(request)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("request_", "valid"), AGREE)
def test_schema_and_pydantic_agree(request_, valid):
    assert pydantic_accepts(request_) is valid
    assert schema_accepts(PROVISION_SCHEMA, {"spec": request_}) is valid


@pytest.mark.parametrize("request_", PYTHON_ONLY)
def test_what_only_python_can_check(request_):
    assert schema_accepts(PROVISION_SCHEMA, {"spec": request_})
    assert not pydantic_accepts(request_)


def test_teardown_carries_the_identity_rules():
    spec = PROVISION_SCHEMA["definitions"]["ClusterSpec"]["properties"]
    for field, rule in (("environment", ENVIRONMENT), ("name", NAME)):
        assert TEARDOWN_SCHEMA["properties"][field]["pattern"] == rule.pattern
        assert spec[field]["pattern"] == rule.pattern
    assert TEARDOWN_SCHEMA["required"] == ["environment", "name"]
    assert not schema_accepts(TEARDOWN_SCHEMA, {"environment": "prod", "name": "Bad_Name"})
    assert schema_accepts(TEARDOWN_SCHEMA, {"environment": "prod", "name": "web"})


def test_optional_fields_are_plain_fields_in_the_form():
    """No `anyOf [..., null]`: the UI shows a plain input instead of a type chooser."""
    text = json.dumps(PROVISION_SCHEMA)
    assert '"anyOf"' not in text and '"oneOf"' not in text and '{"type": "null"}' not in text


# Every string parameter of every deployment and the rule its schema states (None: free text,
# bounded by maxLength only). A new string parameter fails the tests until it is listed here.
PARAMETER_RULES: dict[str, TextRule | None] = {
    "environment": ENVIRONMENT,
    "name": NAME,
    "resource_name": RESOURCE_NAME,
    "snapshot_name": SNAPSHOT_NAME,
    "entry": HISTORY_ENTRY,
    "confirm_rotate_ca": CLUSTER_REF,
    "sweep": RUN_ID,
    **dict.fromkeys(
        ("ssh_access", "state_volume", "rke_settings", "policy", "aws_credentials"), BLOCK_NAME
    ),
    "manifest": None,
}
# A good value of each required parameter of any deployment, and a value no rule accepts.
GOOD = {
    "environment": "prod",
    "name": "web",
    "resource_name": "app",
    "manifest": "kind: ConfigMap\n",
    "snapshot_name": "snap-1",
    "source": "history",
    "spec": with_spec(),
}
BAD = "Bad_Name/x"


def _flow_schemas() -> dict[str, dict]:
    """Each deployed flow's parameter schema as bootstrap stores it, by flow name."""
    made = {}
    for declared in deployment_specs():
        flow = load_flow(declared["entrypoint"])
        schema = parameter_schema(flow.fn).model_dump_for_openapi()
        plain_optional_parameters(schema["properties"])
        made[flow.name] = schema
    return made


FLOW_SCHEMAS = _flow_schemas()


@pytest.mark.parametrize("flow_name", sorted(FLOW_SCHEMAS))
def test_every_parameter_is_a_plain_field_stating_its_rule(flow_name):
    schema = FLOW_SCHEMAS[flow_name]
    for name, prop in schema["properties"].items():
        assert "anyOf" not in prop and prop.get("type") != "null", (flow_name, name, prop)
        if "default" in prop:  # a default keeps its own rule
            alone = {**schema, "properties": {name: prop}, "required": []}
            assert schema_accepts(alone, {name: prop["default"]}), (flow_name, name)
        if prop.get("type") != "string":
            continue
        assert name in PARAMETER_RULES, f"{flow_name}: string parameter {name} has no rule"
        rule = PARAMETER_RULES[name]
        if rule is None:
            assert "pattern" not in prop and prop["maxLength"] == MAX_MANIFEST_BYTES
        else:
            assert (prop["pattern"], prop["maxLength"]) == (rule.pattern, rule.max_length), name


def _rules() -> dict[str, str]:
    rules = {
        name: value.pattern
        for name, value in vars(spec_module).items()
        if isinstance(value, TextRule)
    }
    named = {rule.pattern for rule in PARAMETER_RULES.values() if rule}
    return {
        **rules,
        **{f"parameter rule {i}": pattern for i, pattern in enumerate(sorted(named))},
        "ADDRESS": ADDRESS_SCHEMA["pattern"],
    }


def _sample_strings() -> list[str]:
    found: set[str] = set()

    def walk(value) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk([request for request, _ in AGREE] + PYTHON_ONLY + list(GOOD.values()))
    extra = {"fe80::1%eth0", "web\r", "\u0661", "a\u212a", BAD, "-", "snap.zip", "a..b"}
    return sorted(found | extra | {str(uuid.UUID(int=7)), "20260101T000000.000001Z-up"})


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run JavaScript")
def test_patterns_mean_the_same_in_javascript():
    """The UI's form is JavaScript: each pattern compiles there and decides every sample alike."""
    patterns, samples = _rules(), _sample_strings()
    script = (
        "const {patterns, samples} = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "const out = {};"
        "for (const [k, p] of Object.entries(patterns)) {"
        "  const re = new RegExp(p, 'u'); out[k] = samples.map(s => re.test(s)); }"
        "process.stdout.write(JSON.stringify(out));"
    )
    result = subprocess.run(
        ["node", "-e", script],
        input=json.dumps({"patterns": patterns, "samples": samples}),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    javascript = json.loads(result.stdout)
    for name, pattern in patterns.items():
        python = [re.search(pattern, s) is not None for s in samples]
        assert javascript[name] == python, name


# --- through the real Prefect server ------------------------------------------------------------


@pytest.fixture(scope="module")
def deployed(prefect_server):
    """The deployments of prefect.yaml, applied the way bootstrap applies them, on a new pool."""
    report = BootstrapReport()
    pool = f"schema-{uuid.uuid4().hex[:6]}"
    _ensure_work_pool(pool, "process", report)
    _apply_deployments(pool, report)
    with get_client(sync_client=True) as client:
        yield client


def _runs(client, deployment_id) -> list:
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    )


def test_every_deployment_enforces_its_parameter_schema(deployed):
    for declared in deployment_specs():
        assert declared.get("enforce_parameter_schema") is True, declared["entrypoint"]
        flow = load_flow(declared["entrypoint"])
        deployment = deployed.read_deployment_by_name(f"{flow.name}/{declared['name']}")
        assert deployment.enforce_parameter_schema is True
        stored = deployment.parameter_openapi_schema
        expected = parameter_schema(flow.fn).model_dump_for_openapi()
        plain_optional_parameters(expected["properties"])
        for part in ("properties", "required", "definitions"):
            assert (stored.get(part) or None) == (expected.get(part) or None), part


@pytest.mark.parametrize(
    ("flow_name", "parameters", "field"),
    [
        ("provision-cluster", {"spec": with_spec(name="Bad_Name")}, "spec.name"),
        ("provision-cluster", {"spec": with_spec(hosts=["10.0.0.9"])}, "spec"),
        ("provision-cluster", {"spec": with_node(roles=["controlplane", "boss"])}, "roles"),
        ("provision-cluster", {"spec": with_node(address="fe80::1%eth0")}, "address"),
        ("teardown-cluster", {"environment": "prod", "name": "Bad_Name"}, "name"),
    ],
)
def test_the_api_refuses_a_bad_request_before_a_run_exists(deployed, flow_name, parameters, field):
    deployment = deployed.read_deployment_by_name(f"{flow_name}/default")
    before = len(_runs(deployed, deployment.id))
    with pytest.raises(PrefectHTTPStatusError) as refused:
        deployed.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    assert refused.value.response.status_code == 409
    detail = refused.value.response.json()["detail"]
    assert detail.startswith("Error creating flow run: Validation failed") and field in detail
    assert len(_runs(deployed, deployment.id)) == before


def test_no_deployment_shows_an_optional_parameter_as_a_type_chooser(deployed):
    for flow_name in FLOW_SCHEMAS:
        stored = deployed.read_deployment_by_name(f"{flow_name}/default").parameter_openapi_schema
        text = json.dumps(stored)
        assert '"anyOf"' not in text and '{"type": "null"}' not in text, flow_name


@pytest.mark.parametrize("flow_name", sorted(FLOW_SCHEMAS))
def test_the_api_refuses_a_bad_name_for_every_deployment(deployed, flow_name):
    """Each string parameter in turn gets a value its rule refuses: the server answers 409
    and no run carries the value; good values, with an explicit null for each optional
    parameter (as a sharded monitor sweep sends them), make a run."""
    deployment = deployed.read_deployment_by_name(f"{flow_name}/default")
    schema = deployment.parameter_openapi_schema
    required = {name: GOOD[name] for name in schema.get("required", [])}
    checked = [name for name in schema["properties"] if name in PARAMETER_RULES]
    assert checked, flow_name
    too_long = "x" * (MAX_MANIFEST_BYTES + 1)
    for name in checked:
        bad = BAD if PARAMETER_RULES[name] else too_long
        with pytest.raises(PrefectHTTPStatusError) as refused:
            deployed.create_flow_run_from_deployment(
                deployment.id, parameters={**required, name: bad}
            )
        assert refused.value.response.status_code == 409, name
        assert f"field '{name}'" in refused.value.response.json()["detail"], name
    runs = _runs(deployed, deployment.id)
    assert not [r.id for r in runs if {BAD, too_long} & set(map(str, r.parameters.values()))]

    nulls = {
        name: None
        for name, prop in schema["properties"].items()
        if name not in required and "default" not in prop
    }
    run = deployed.create_flow_run_from_deployment(deployment.id, parameters={**required, **nulls})
    try:
        assert run.state.is_scheduled()
    finally:
        deployed.delete_flow_run(run.id)


@pytest.mark.parametrize(
    ("flow_name", "parameters"),
    [
        ("provision-cluster", {"spec": ClusterSpec(**with_spec()).model_dump(mode="json")}),
        ("provision-cluster", {"spec": {"name": "web", "hosts": ["10.0.0.1"]}}),
        ("teardown-cluster", {"environment": "prod", "name": "web"}),
    ],
)
def test_the_api_accepts_a_good_request(deployed, flow_name, parameters):
    deployment = deployed.read_deployment_by_name(f"{flow_name}/default")
    run = deployed.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    try:
        assert run.parameters == parameters and run.state.is_scheduled()
    finally:
        deployed.delete_flow_run(run.id)


def test_every_flow_has_exactly_one_deployment():
    """A YAML merge that drops a key silently would leave a flow without its `<flow>/default`."""
    import importlib
    import pkgutil

    from prefect import Flow

    import flows

    declared: dict[str, int] = {}
    for spec in deployment_specs():
        assert {"name", "entrypoint", "work_pool"} <= spec.keys(), spec
        declared[spec["entrypoint"]] = declared.get(spec["entrypoint"], 0) + 1
    found = {
        f"{module.name}.{attribute}"
        for module in pkgutil.iter_modules(flows.__path__, "flows.")
        for attribute, value in vars(importlib.import_module(module.name)).items()
        if isinstance(value, Flow) and value.__module__ == module.name
    }
    assert found and declared == dict.fromkeys(found, 1)


def test_bootstrap_gives_snapshot_etcd_one_schedule_per_environment(deployed):
    crons = {"prod": "0 2 * * *", "staging": "15 3 * * 1-5"}
    pool = f"snap-{uuid.uuid4().hex[:6]}"
    _ensure_work_pool(pool, "process", BootstrapReport())
    _apply_deployments(pool, BootstrapReport(), {SNAPSHOT_FLOW: snapshot_schedules(crons)})
    # kept by a later bootstrap without them (nor schedules added in the UI)
    try:
        _apply_deployments(pool, BootstrapReport())  # a later bootstrap without the option
        deployment = deployed.read_deployment_by_name("snapshot-etcd/default")
        made = sorted(deployment.schedules, key=lambda s: s.parameters["environment"])
        assert [(s.parameters, s.schedule.cron, s.schedule.timezone) for s in made] == [
            ({"environment": "prod"}, "0 2 * * *", "UTC"),
            ({"environment": "staging"}, "15 3 * * 1-5", "UTC"),
        ]
    finally:
        deployment = deployed.read_deployment_by_name("snapshot-etcd/default")
        for schedule in deployment.schedules:
            deployed.delete_deployment_schedule(deployment.id, schedule.id)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("prod", "give ENV=CRON"),
        ("Prod=0 2 * * *", "snapshot schedule environment 'Prod' is not valid"),
        ("prod=every day", "'every day' is not a cron expression"),
    ],
)
def test_bootstrap_refuses_a_bad_snapshot_schedule_before_any_change(item, message):
    cli = str(Path(sys.executable).parent / "cluster-mgmt")
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never reached
    done = subprocess.run(
        [cli, "bootstrap", "--snapshot-schedule", item],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
