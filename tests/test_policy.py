"""Policy: the built-in rules, and the client against the lab policy service (real HTTPS)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import traceback
import tracemalloc
from pathlib import Path

import anyio
import httpx
import pytest
import yaml
from pydantic import ValidationError

from blocks import PolicyService as PolicyBlock
from cluster_mgmt.policy import (
    DEFAULT_POLICY_FILE,
    MAX_RESPONSE_BYTES,
    TOTAL_TIMEOUT_SECONDS,
    Decision,
    PolicyClient,
    PolicyError,
    Violation,
    backoff_delay,
    load_rules,
    parse_verdict,
)
from cluster_mgmt.redact import MASK
from cluster_mgmt.spec import ClusterSpec
from lab.policy_service import PolicyService

TOKEN = "lab-policy-" + secrets.token_hex(16)
V130 = "v1.30.5-rancher1-1"


def spec(environment: str = "dev", count: int = 3, **fields) -> dict:
    """A ClusterSpec body as the flows send it: `count` hosts on 10.0.0.x."""
    fields.setdefault("kubernetes_version", V130)
    hosts = [f"10.0.0.{i}" for i in range(1, count + 1)]
    if "nodes" not in fields:
        fields.setdefault("hosts", hosts)
    return ClusterSpec(environment=environment, name="web", **fields).model_dump(mode="json")


def three_etcd(**node_fields) -> list[dict]:
    both = ["controlplane", "etcd", "worker"]
    return [{"address": f"10.0.0.{i}", "roles": both, **node_fields} for i in (1, 2, 3)]


def rules(tmp_path: Path, *rule_list: dict) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"rules": list(rule_list)}))
    return path


def verdict(path: Path, body: dict, environment: str = "dev", kind: str = "rke-cluster"):
    return load_rules(path).evaluate(kind, environment, "web", body)


# --------------------------------------------------------------------------- rules


def test_default_policy_loads_and_is_identified_by_its_hash() -> None:
    ruleset = load_rules()
    assert ruleset.path == DEFAULT_POLICY_FILE
    assert ruleset.version == hashlib.sha256(DEFAULT_POLICY_FILE.read_bytes()).hexdigest()
    decision = ruleset.evaluate("rke-cluster", "dev", "web", spec())
    assert decision.allowed and decision.violations == ()
    assert decision.source == f"built-in {DEFAULT_POLICY_FILE}"
    assert decision.to_dict()["version"] == ruleset.version


@pytest.mark.parametrize(
    ("rule", "allowed_spec", "denied_spec", "needle"),
    [
        (
            {"type": "kubernetes-versions", "allowed": [V130]},
            spec(),
            spec(kubernetes_version="v1.27.16-rancher1-1"),
            "kubernetes_version v1.27.16-rancher1-1 is not allowed",
        ),
        (
            {"type": "network-plugins", "allowed": ["canal", "calico"]},
            spec(network_plugin="calico"),
            spec(network_plugin="flannel"),
            "network_plugin flannel",
        ),
        ({"type": "node-count", "min": 2, "max": 4}, spec(count=4), spec(count=5), "maximum of 4"),
        ({"type": "node-count", "min": 2}, spec(count=2), spec(count=1), "minimum of 2"),
        ({"type": "etcd-quorum", "min": 3}, spec(count=5), spec(count=3), "1 etcd nodes"),
        (
            {"type": "node-addresses", "cidrs": ["10.0.0.0/24"]},
            spec(),
            spec(hosts=["10.0.0.1", "10.0.1.2"]),
            "node address 10.0.1.2 is outside",
        ),
        (
            {"type": "node-addresses", "domains": ["corp.example"]},
            spec(hosts=["a.corp.example", "corp.example"]),
            spec(hosts=["a.corp.example", "evil-corp.example"]),
            "evil-corp.example",
        ),
        (
            {"type": "node-addresses", "cidrs": ["10.0.0.0/24"], "domains": ["corp.example"]},
            spec(nodes=three_etcd(internal_address="n.corp.example")),
            spec(nodes=three_etcd(internal_address="192.168.1.1")),
            "internal_address 192.168.1.1",
        ),
        (
            {"type": "etcd-snapshots"},
            spec(),
            spec(etcd_snapshots={"enabled": False}),
            "must be enabled",
        ),
        (
            {"type": "etcd-snapshots", "max_interval_hours": 6, "min_retention_hours": 48},
            spec(etcd_snapshots={"interval_hours": 6, "retention_hours": 48}),
            spec(etcd_snapshots={"interval_hours": 12, "retention_hours": 48}),
            "interval_hours 12 exceeds 6",
        ),
        (
            {"type": "customer-access", "allowed": ["namespace-admin"]},
            spec(customer={"access": "namespace-admin"}),
            spec(),
            "customer.access cluster-admin is not allowed",
        ),
    ],
)
def test_each_rule_type_allows_and_denies(tmp_path, rule, allowed_spec, denied_spec, needle):
    path = rules(tmp_path, {"name": "r", **rule})
    assert verdict(path, allowed_spec).violations == ()
    denied = verdict(path, denied_spec)
    assert not denied.allowed
    assert {v.rule for v in denied.errors} == {"r"}
    assert needle in denied.errors[0].message


def test_unresolved_kubernetes_version_is_a_violation(tmp_path) -> None:
    path = rules(tmp_path, {"name": "k", "type": "kubernetes-versions", "allowed": [V130]})
    decision = verdict(path, spec(kubernetes_version=None))
    assert not decision.allowed and "resolve it" in decision.errors[0].message


def test_environment_scoping_and_warnings(tmp_path) -> None:
    path = rules(
        tmp_path,
        {"name": "quorum", "type": "etcd-quorum", "environments": ["production"]},
        {"name": "plugins", "type": "network-plugins", "severity": "warning", "allowed": ["canal"]},
    )
    small = spec(count=1, network_plugin="calico")
    dev = verdict(path, small, "dev")
    assert dev.allowed and [v.rule for v in dev.warnings] == ["plugins"] and dev.errors == ()
    production = verdict(path, small, "production")
    assert not production.allowed and [v.rule for v in production.errors] == ["quorum"]


def test_teardown_rules_apply_only_to_teardown(tmp_path) -> None:
    path = rules(
        tmp_path,
        {"name": "protected", "type": "protected-environments", "environments": ["production"]},
        {"name": "k", "type": "kubernetes-versions", "allowed": ["v1.0.0-rancher1-1"]},
    )
    teardown = verdict(path, {}, "production", kind="rke-cluster-teardown")
    assert not teardown.allowed and "production is protected" in teardown.errors[0].message
    assert verdict(path, {}, "dev", kind="rke-cluster-teardown").allowed
    assert [v.rule for v in verdict(path, spec(), "production").violations] == ["k"]
    with pytest.raises(PolicyError, match="unknown policy kind"):
        verdict(path, {}, "dev", kind="rke-cluster-delete")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("rules: [\n  - name: a\n    type: [", "is not valid YAML"),
        ("- name: a", "exactly one key, 'rules'"),
        ("rules: []\nextra: 1", "exactly one key, 'rules'"),
        ("rules: {name: a}", "'rules' must be a list"),
        ("rules: [{type: etcd-quorum}]", "rule #1: key 'name' is required"),
        ("rules: [{name: a}]", "rule 'a': key 'type' is missing; known types: kubernetes-versions"),
        ("rules: [3]", "rule #1: a rule is a mapping with name and type"),
        ("rules: [{name: a, type: gpu-quota}]", "rule 'a': key 'type' has unknown rule type"),
        ("rules: [{name: a, type: etcd-quorum, minimum: 3}]", "rule 'a': unknown key 'minimum'"),
        (
            "rules: [{name: a, type: etcd-quorum, severity: fatal}]",
            "rule 'a': key 'severity': Input should be 'error' or 'warning'",
        ),
        ("rules: [{name: a, type: etcd-quorum, environments: prod}]", "key 'environments'"),
        ("rules: [{name: a, type: network-plugins}]", "key 'allowed' is required"),
        ("rules: [{name: a, type: node-count}]", "key 'min or max' is required"),
        ("rules: [{name: a, type: node-count, min: true}]", "key 'min': Input should be a valid"),
        ("rules: [{name: a, type: node-count, min: 5, max: 3}]", "'min' (5) exceeds 'max'"),
        ("rules: [{name: a, type: node-count, max: -1}]", "key 'max': Input should be greater"),
        ("rules: [{name: a, type: node-addresses, cidrs: [10.0.0.0/33]}]", "key 'cidrs.0'"),
        ("rules: [{name: a, type: node-addresses}]", "key 'cidrs or domains' is required"),
        ("rules: [{name: a, type: customer-access, allowed: [root]}]", "key 'allowed.0'"),
        ("rules: [{name: a, type: protected-environments}]", "key 'environments' is required"),
        (
            "rules: [{name: a, type: etcd-quorum}, {name: a, type: etcd-quorum}]",
            "rule name 'a' is used twice",
        ),
    ],
)
def test_bad_policy_files_fail_at_load(tmp_path, content: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(PolicyError) as error:
        load_rules(path)
    assert str(path) in str(error.value) and needle in str(error.value)


def test_missing_policy_file(tmp_path) -> None:
    with pytest.raises(PolicyError, match="cannot be read"):
        load_rules(tmp_path / "absent.yaml")


# --------------------------------------------------------------------------- verdict parsing


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"<html>", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"violations": []}', "key 'allowed': Field required"),
        (b'{"allowed": "yes", "violations": []}', "key 'allowed': Input should be a valid boolean"),
        (b'{"allowed": true}', "key 'violations': Field required"),
        (b'{"allowed": false, "violations": ["no"]}', "key 'violations.0'"),
        (
            b'{"allowed": false, "violations": [{"rule": "r", "severity": "error"}]}',
            "key 'violations.0.message': Field required",
        ),
        (
            b'{"allowed": false, "violations": [{"rule": "r", "message": "m", "severity": "fatal"}]}',
            "key 'violations.0.severity': Input should be 'error' or 'warning'",
        ),
        (
            b'{"allowed": true, "violations": [{"rule": "r", "message": "m", "severity": "error"}]}',
            "is malformed (it allowed a request with error violations)",
        ),
    ],
)
def test_malformed_verdicts_are_errors_never_allows(body: bytes, needle: str) -> None:
    with pytest.raises(PolicyError) as error:
        parse_verdict(body)
    assert needle in str(error.value) and '{"allowed": bool' in str(error.value)


def test_verdict_keeps_what_it_knows() -> None:
    verdict = parse_verdict(
        b'{"allowed": true, "violations": [{"rule": "r", "message": "m", "severity": "warning",'
        b' "link": "x"}], "version": "7", "trace": 1}'
    )
    assert verdict.allowed and verdict.version == "7"
    assert verdict.violations == [Violation("r", "m", "warning")]


def test_backoff_is_full_jitter_capped_and_honours_retry_after() -> None:
    class Top:
        @staticmethod
        def uniform(low: float, high: float) -> float:
            return high

    assert [backoff_delay(n, 0.5, 3, rng=Top) for n in (1, 2, 3, 4)] == [0.5, 1, 2, 3]
    assert all(0 <= backoff_delay(5, 0.5, 3) <= 3 for _ in range(100))
    assert backoff_delay(1, 0.5, 3, retry_after=2) == 2
    assert backoff_delay(1, 0.5, 3, retry_after=30) == 3


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("", "has no url"),
        ("http://policy.example", "must be https"),
        ("https://user:pw@policy.example", "must not carry credentials"),
        ("https://policy.example/?x=1", "query or fragment"),
    ],
)
def test_client_configuration_errors(url: str, needle: str) -> None:
    with pytest.raises(PolicyError, match=needle):
        PolicyClient(url, TOKEN)


def test_client_needs_token_and_usable_ca_bundle(tmp_path) -> None:
    with pytest.raises(PolicyError, match="has no token"):
        PolicyClient("https://policy.example", " ")
    with pytest.raises(PolicyError, match="neither PEM text nor a readable file"):
        PolicyClient("https://policy.example", TOKEN, ca_bundle=str(tmp_path / "none.pem"))
    with pytest.raises(PolicyError, match="no usable CA"):
        bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        PolicyClient("https://policy.example", TOKEN, ca_bundle=bogus)


# --------------------------------------------------------------------------- against the lab


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with PolicyService(tmp_path_factory.mktemp("policy"), TOKEN) as svc:
        yield svc


@pytest.fixture
def lab(service: PolicyService) -> PolicyService:
    service.set_mode("normal")
    return service


def client(lab: PolicyService, token: str = TOKEN, **options) -> PolicyClient:
    settings = {
        "ca_bundle": lab.ca_pem,
        "timeout_seconds": 2.0,
        "max_attempts": 3,
        "backoff_base": 0.05,
        "backoff_max": 0.2,
        "total_timeout": 10.0,
        **options,
    }
    return PolicyClient(lab.url, token, **settings)


def fails(policy: PolicyClient, body: dict | None = None, env: str = "dev") -> PolicyError:
    """The PolicyError of one validation; the token is nowhere in it."""
    with pytest.raises(PolicyError) as error:
        policy.validate("rke-cluster", env, "web", spec() if body is None else body)
    text = "".join(traceback.format_exception(error.value)) + repr(error.value) + repr(policy)
    assert TOKEN not in text
    return error.value


def test_allowed_through_the_service(lab) -> None:
    decision = client(lab).validate("rke-cluster", "dev", "web", spec())
    assert decision.allowed and decision.violations == ()
    assert decision.source == f"service {lab.url}" and decision.attempts == 1
    assert decision.version == load_rules().version
    assert lab.requests == 1


def test_denied_with_violations(lab) -> None:
    decision = client(lab).validate("rke-cluster", "production", "web", spec(count=1))
    assert not decision.allowed
    assert {v.rule for v in decision.errors} >= {"production-etcd-quorum", "production-size"}
    lab.set_mode("deny")
    decision = client(lab).validate("rke-cluster", "dev", "web", spec())
    assert not decision.allowed and [v.rule for v in decision.errors] == ["lab-deny"]
    assert TOKEN not in str(decision.to_dict()) + decision.summary()


def test_ca_bundle_as_a_file_path(lab) -> None:
    assert client(lab, ca_bundle=str(lab.ca_path)).validate("rke-cluster", "dev", "w", spec())


@pytest.mark.parametrize(
    ("mode", "options", "needle"),
    [
        ("error500", {}, "HTTP 500"),
        ("refused", {}, "Connection refused"),
        ("hang", {}, "no answer within 0.3s"),
        ("slow", {"delay": 1.0}, "no answer within 0.3s"),
        ("status429", {"retry_after": 1}, "HTTP 429"),
        ("flaky", {"failures": 10}, "HTTP 503"),
    ],
)
def test_transient_faults_are_retried_then_fail(lab, mode, options, needle) -> None:
    lab.set_mode(mode, **options)
    error = fails(client(lab, timeout_seconds=0.3))
    assert needle in str(error) and "[3 attempts in" in str(error)
    assert error.attempts == 3
    assert lab.requests == (0 if mode == "refused" else 3)


def test_recovery_after_flaky_and_429(lab) -> None:
    lab.set_mode("flaky", failures=2)
    assert client(lab).validate("rke-cluster", "dev", "web", spec()).attempts == 3
    assert lab.requests == 3
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await anyio.sleep(seconds)

    lab.set_mode("status429", retry_after=1, times=1)
    decision = client(lab, backoff_max=5, sleep=sleep).validate("rke-cluster", "dev", "w", spec())
    assert decision.allowed and decision.attempts == 2 and slept == [1.0]
    lab.set_mode("status429", retry_after=30, times=1)
    assert client(lab, sleep=sleep).validate("rke-cluster", "dev", "w", spec()).allowed
    assert slept == [1.0, 0.2]  # Retry-After capped at backoff_max


def test_slow_answer_within_the_timeout(lab) -> None:
    lab.set_mode("slow", delay=0.3)
    assert client(lab, timeout_seconds=3).validate("rke-cluster", "dev", "web", spec()).allowed


def test_total_timeout_bounds_the_whole_call(lab) -> None:
    lab.set_mode("hang")
    error = fails(client(lab, timeout_seconds=0.5, max_attempts=50, total_timeout=1.5))
    assert "within the total timeout of 1.5s" in str(error)
    assert 2 <= error.attempts < 50 and lab.requests == error.attempts


def _aborted(lab: PolicyService, at_least: int) -> int:
    """The server's count of answers the client hung up on (counted in its own threads)."""
    deadline = time.monotonic() + 5
    while lab.aborted < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return lab.aborted


def test_one_deadline_bounds_an_attempt_that_trickles_headers(lab) -> None:
    # 10 s of header lines, one every 0.1 s: no read ever waits long, only a deadline stops it
    lab.set_mode("trickle", interval=0.1, lines=100)
    error = fails(client(lab, timeout_seconds=0.5, max_attempts=2, total_timeout=20))
    assert "gave no verdict (last: no answer within 0.5s)" in str(error)
    assert error.attempts == 2 and lab.requests == 2
    assert _aborted(lab, 2) == 2  # the client closed both connections mid-answer


def test_the_total_timeout_cuts_a_trickle_mid_attempt(lab) -> None:
    lab.set_mode("trickle", interval=0.1, lines=100)
    error = fails(client(lab, timeout_seconds=1, max_attempts=5, total_timeout=1.5))
    assert "within the total timeout of 1.5s (last: no answer within 1s)" in str(error)
    assert error.attempts == 2 and lab.requests == 2 and _aborted(lab, 2) == 2


def test_timeout_seconds_may_not_exceed_the_total() -> None:
    with pytest.raises(PolicyError, match=r"timeout_seconds \(90\) exceeds the 60s"):
        PolicyClient("https://policy.example", TOKEN, timeout_seconds=90)
    assert TOTAL_TIMEOUT_SECONDS == 60
    with pytest.raises(ValidationError, match="less than or equal to 60"):
        PolicyBlock(url="https://policy.example", token=TOKEN, timeout_seconds=61)
    assert PolicyBlock(url="https://p.example", token=TOKEN, timeout_seconds=60).client()


def test_compressed_answers_are_refused_without_inflating(lab) -> None:
    lab.set_mode("gzip-bomb", size=64 << 20)
    tracemalloc.start()
    try:
        error = fails(client(lab))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "Content-Encoding 'gzip, gzip'" in str(error) and "refused" in str(error)
    assert error.attempts == 1 and lab.requests == 1
    assert lab.last_headers["Accept-Encoding"] == "identity"
    assert peak < 4 * MAX_RESPONSE_BYTES  # nothing was inflated (it would take 64 MiB)


@pytest.mark.parametrize("severity", ["error", "warning"])
def test_a_token_echoed_by_the_service_is_masked(lab, severity: str) -> None:
    lab.set_mode("echo-token", severity=severity)
    decision = client(lab).validate("rke-cluster", "dev", "web", spec())
    assert decision.allowed is (severity == "warning")
    text = f"{decision!r}{decision.to_dict()}{decision.summary()}"
    encoded = base64.b64encode(TOKEN.encode()).decode()
    assert TOKEN not in text and encoded not in text
    (violation,) = decision.violations
    assert violation.rule == f"caller-{MASK}" and violation.message.startswith(f"caller {MASK}")
    assert decision.version == f"v-{MASK}"


@pytest.mark.parametrize(
    ("mode", "needle"),
    [
        ("malformed", "not valid JSON"),
        ("wrong-content-type", "content type 'text/html', not application/json"),
    ],
)
def test_garbage_answers_are_errors_not_retried(lab, mode: str, needle: str) -> None:
    lab.set_mode(mode)
    error = fails(client(lab))
    assert needle in str(error) and error.attempts == 1 and lab.requests == 1


def _tls_failures(lab: PolicyService, at_least: int) -> int:
    deadline = time.monotonic() + 2  # the server counts a failed handshake in its own thread
    while lab.tls_failures < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    return lab.tls_failures


def test_untrusted_certificate_is_a_clear_tls_error(lab) -> None:
    lab.set_mode("untrusted-cert")
    error = fails(client(lab))
    assert "TLS verification" in str(error) and "ca_bundle" in str(error)
    assert error.attempts == 1 and lab.requests == 0 and _tls_failures(lab, 1) == 1
    lab.set_mode("normal")
    error = fails(client(lab, ca_bundle=None))  # the system trust store does not know the lab CA
    assert "TLS verification" in str(error) and lab.requests == 0


@pytest.mark.parametrize(
    ("token", "code"),
    [("wrong-" + secrets.token_hex(8), 403), (TOKEN, 401)],
    ids=["wrong-token-403", "lab-token-401"],  # stable ids: the tokens are random
)
def test_rejected_token_is_not_retried(lab, token: str, code: int) -> None:
    if code == 401:
        lab.set_mode("status", code=401)  # e.g. an expired token
    error = fails(client(lab, token=token))
    assert f"rejected the token (HTTP {code})" in str(error) and "policy-service block" in str(
        error
    )
    assert token not in str(error) and error.attempts == 1 and lab.requests == 1


def test_other_client_errors_are_not_retried(lab) -> None:
    lab.set_mode("status", code=404)
    error = fails(client(lab))
    assert "HTTP 404" in str(error) and "check the url" in str(error) and lab.requests == 1


def test_lab_contract_auth_and_bad_bodies(lab) -> None:
    url, body = f"{lab.url}/v1/validate", {"kind": "rke-cluster", "environment": "dev"}
    with httpx.Client(verify=str(lab.ca_path)) as http:
        assert http.post(url, json=body).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert http.post(url, json=body, headers=bad).status_code == 403
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert http.post(url, content=b"{", headers=good).status_code == 400
        assert http.post(url, json=body, headers=good).status_code == 400
    assert lab.requests == 4


def test_token_never_in_repr() -> None:
    policy = PolicyClient("https://policy.example", TOKEN)
    assert TOKEN not in repr(policy) + str(policy)


# --------------------------------------------------------------------------- parity

ONE_ETCD = [{"address": "10.0.0.1", "roles": ["controlplane", "etcd"]}] + [
    {"address": f"10.0.0.{i}", "roles": ["worker"]} for i in (2, 3, 4)
]
PARITY = [
    ("rke-cluster", "dev", spec()),
    ("rke-cluster", "dev", spec(count=1, network_plugin="none")),
    ("rke-cluster", "dev", spec(kubernetes_version="v1.27.16-rancher1-1")),
    ("rke-cluster", "dev", spec(hosts=["8.8.8.8", "node.internal", "127.0.0.5"])),
    ("rke-cluster", "dev", spec(count=51)),
    ("rke-cluster", "production", spec(count=5, customer={"access": "namespace-admin"})),
    ("rke-cluster", "production", spec(count=3)),
    ("rke-cluster", "prod", spec(count=5, etcd_snapshots={"enabled": False})),
    ("rke-cluster", "prod", spec(nodes=three_etcd(), etcd_snapshots={"interval_hours": 24})),
    ("rke-cluster", "production", spec(nodes=ONE_ETCD, customer={"access": "namespace-admin"})),
    ("rke-cluster-teardown", "dev", {}),
    ("rke-cluster-teardown", "production", {}),
]


def test_built_in_rules_and_service_agree(lab) -> None:
    built_in, policy = load_rules(), client(lab)
    outcomes = []
    for kind, environment, body in PARITY:
        local = built_in.evaluate(kind, environment, "web", body)
        remote = policy.validate(kind, environment, "web", body)
        assert (local.allowed, _rules(local)) == (remote.allowed, _rules(remote)), (
            environment,
            body,
        )
        assert local.version == remote.version
        outcomes.append(local.allowed)
    assert outcomes.count(True) >= 3 and outcomes.count(False) >= 3


def _rules(decision: Decision) -> list[tuple[str, str]]:
    return sorted((v.rule, v.severity) for v in decision.violations)


def test_decision_shape() -> None:
    decision = Decision(
        allowed=True,
        violations=(Violation("w", "watch out", "warning"),),
        source="built-in x",
        version="abc",
    )
    assert decision.warnings and not decision.errors
    assert decision.to_dict()["violations"] == [
        {"rule": "w", "message": "watch out", "severity": "warning"}
    ]
    assert "[warning] w: watch out" in decision.summary()
