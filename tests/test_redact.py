"""Redaction: registered secrets and their base64, tracebacks, PEM blocks over several records,
and the same through a real Prefect run logger into the Prefect API."""

from __future__ import annotations

import base64
import io
import logging
import secrets

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from prefect import flow, get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from cluster_mgmt import redact as redaction
from cluster_mgmt.redact import MASK, RedactingFilter, redact, register_secret
from flows.operation import install_redaction


def fresh_secret() -> str:
    secret = "s3cr3t-" + secrets.token_urlsafe(24)
    register_secret(secret)
    return secret


def private_key() -> str:
    """An unregistered private key in OpenSSH PEM armour, made now."""
    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )


def b64_forms(data: bytes) -> list[str]:
    std, url = base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()
    return [std, std.rstrip("="), url, url.rstrip("=")]


def test_secret_and_its_base64_forms_are_masked() -> None:
    secret = ">>>?>>>?" + fresh_secret()  # its base64 has '+': the urlsafe form differs
    register_secret(secret)
    forms = b64_forms(secret.encode())
    assert len(set(forms)) == 4
    for form in [secret, *forms]:
        assert redact(f"data: {form} end") == f"data: {MASK} end"


@pytest.mark.parametrize("before", [0, 1, 2, 3, 4, 5])
def test_secret_inside_longer_base64_is_masked_at_every_alignment(before: int) -> None:
    secret = fresh_secret().encode()
    blob = secrets.token_bytes(before) + secret + secrets.token_bytes(7)
    start = 4 * -(-before // 3)  # the groups of 3 bytes that hold only secret bytes
    stop = 4 * ((before + len(secret)) // 3)
    for encoded in b64_forms(blob):
        out = redact(encoded)
        assert out.startswith(encoded[:start] + MASK)
        assert encoded[start:stop] not in out


def test_tracebacks_and_stacks_are_masked() -> None:
    secret = fresh_secret()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test-redact-tracebacks")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"login failed with {secret}")
        except RuntimeError:
            logger.exception("failed")
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m", None, None)
        record.stack_info = f"Stack (most recent call last):\n  secret={secret}"
        handler.handle(record)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "RuntimeError: login failed with " + MASK in text and "Traceback" in text
    assert secret not in text and record.stack_info.endswith(f"secret={MASK}")


def _through_filter(lines: list[str]) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s|"))
    handler.addFilter(RedactingFilter())
    for line in lines:
        handler.handle(logging.LogRecord("rke", logging.INFO, __file__, 1, line, None, None))
    return stream.getvalue().split("|\n")[:-1]


def test_a_pem_block_over_several_records_is_masked_line_by_line() -> None:
    key = private_key().strip().splitlines()
    lines = ["before", f"writing {key[0]}", *key[1:-1], f"{key[-1]} done", "after"]
    out = _through_filter(lines)
    assert out[0] == "before" and out[-1] == "after"
    assert out[1] == f"writing {MASK}" and out[-2] == f"{MASK} done"
    assert out[2:-2] == [MASK] * (len(key) - 2)
    assert not any(line in "".join(out) for line in key[1:-1])


def test_pem_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redaction, "MAX_PEM_RECORDS", 3)
    key = private_key().strip().splitlines()
    out = _through_filter([key[0], "a", "b", "c", "plain again"])  # no END line ever
    assert out == [MASK, MASK, MASK, MASK, "plain again"]


# --------------------------------------------------------------------------- through Prefect

_SAY: dict[str, str] = {}  # what the flow logs; never a flow parameter (those are stored)


@task
def _task_logs() -> None:
    get_run_logger().warning("task saw %s", _SAY["secret"])


@flow(name="redaction-probe")
def _probe() -> None:
    install_redaction()  # as every operation does first
    logger = get_run_logger()
    secret = _SAY["secret"]
    logger.info("plain %s", secret)
    for form in b64_forms(secret.encode()):
        logger.info("encoded %s", form)
    for line in _SAY["pem"].strip().splitlines():
        logger.info("rke: %s", line)
    try:
        raise RuntimeError(f"could not use {secret}")
    except RuntimeError:
        logger.exception("probe failed")
    _task_logs()
    logger.info("probe done")


@pytest.mark.usefixtures("prefect_server")
def test_secrets_never_reach_the_prefect_api_through_a_run_logger() -> None:
    secret, pem = fresh_secret(), private_key()
    _SAY.update(secret=secret, pem=pem)
    state = _probe(return_state=True)
    assert state.is_completed()
    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    messages = [log.message for log in logs]
    text = "\n".join(messages)
    assert "probe done" in text and "task saw " + MASK in text
    assert f"plain {MASK}" in messages and messages.count(f"encoded {MASK}") == 4
    failed = next(m for m in messages if m.startswith("probe failed"))
    assert "Traceback" in failed and f"RuntimeError: could not use {MASK}" in failed
    body = pem.strip().splitlines()[1:-1]
    assert messages.count(f"rke: {MASK}") == 1 and messages.count(MASK) == len(body) + 1
    leaked = [secret, *b64_forms(secret.encode()), *body]
    assert not [item for item in leaked if item in text]
