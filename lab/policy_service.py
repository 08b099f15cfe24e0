"""Lab Policy Management Service: real HTTPS on loopback, the API of docs/contracts.md, fault modes.

A stand-in for another team's service, so it shares no code with `cluster_mgmt`: it reads the
same YAML policy file (by default the project's `cluster_mgmt/policy.yaml`, by path) with its
own small evaluator. Its CA is generated at start; `ca_pem` is what a client must trust.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "cluster_mgmt" / "policy.yaml"
MODES = (
    "normal",
    "deny",
    "error500",
    "slow",
    "hang",
    "refused",
    "malformed",
    "wrong-content-type",
    "untrusted-cert",
    "status429",
    "flaky",
    "status",
    "trickle",
    "gzip-bomb",
    "echo-token",
)
KINDS = ("rke-cluster", "rke-cluster-teardown", "rke-cluster-maintenance")
RULE_KINDS = {
    "kubernetes-versions": "rke-cluster",
    "network-plugins": "rke-cluster",
    "node-count": "rke-cluster",
    "etcd-quorum": "rke-cluster",
    "node-addresses": "rke-cluster",
    "etcd-snapshots": "rke-cluster",
    "customer-access": "rke-cluster",
    "protected-environments": "rke-cluster-teardown",
}


# --------------------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject, public_key, issuer, issuer_key, *, ca: bool, host: str = ""
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        usage = {"key_cert_sign": True, "crl_sign": True, "digital_signature": False}
    else:
        usage = {"key_cert_sign": False, "crl_sign": False, "digital_signature": True}
        names = {"localhost", "127.0.0.1", host}
        sans = [x509.DNSName(n) for n in sorted(names) if n and not _is_ip(n)]
        sans += [x509.IPAddress(ipaddress.ip_address(n)) for n in sorted(names) if _is_ip(n)]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    builder = builder.add_extension(
        x509.KeyUsage(
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
            **usage,
        ),
        critical=True,
    )
    return builder.sign(issuer_key, hashes.SHA256())


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _server_context(workdir: Path, label: str, host: str) -> tuple[ssl.SSLContext, str]:
    """A TLS server context whose certificate is signed by a fresh CA; and that CA's PEM."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue(
        _name(f"lab policy {label} CA"),
        ca_key.public_key(),
        _name(f"lab policy {label} CA"),
        ca_key,
        ca=True,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(_name(host), key.public_key(), ca.subject, ca_key, ca=False, host=host)
    cert_path, key_path = workdir / f"{label}-server.pem", workdir / f"{label}-server.key"
    cert_path.write_text(_pem(cert) + _pem(ca))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, _pem(ca)


# --------------------------------------------------------------------------- evaluator


class Rules:
    """The policy file's rules, evaluated independently of the production code."""

    def __init__(self, path: Path) -> None:
        raw = path.read_bytes()
        self.version = hashlib.sha256(raw).hexdigest()
        self.rules: list[dict[str, Any]] = yaml.safe_load(raw)["rules"]
        for rule in self.rules:
            if rule.get("type") not in RULE_KINDS:
                raise ValueError(f"{path}: rule {rule.get('name')!r} has unknown type")

    def evaluate(self, kind: str, env: str, name: str, spec: dict) -> dict[str, Any]:
        violations = []
        for rule in self.rules:
            scope = rule.get("environments")
            if RULE_KINDS[rule["type"]] != kind or (scope is not None and env not in scope):
                continue
            check = getattr(self, "_" + rule["type"].replace("-", "_"))
            for message in check(rule, env, name, spec):
                severity = rule.get("severity", "error")
                violations.append({"rule": rule["name"], "message": message, "severity": severity})
        allowed = all(v["severity"] != "error" for v in violations)
        return {"allowed": allowed, "violations": violations, "version": self.version}

    @staticmethod
    def _kubernetes_versions(rule, env, name, spec):
        version = spec.get("kubernetes_version")
        return [] if version in rule["allowed"] else [f"Kubernetes {version} is not permitted"]

    @staticmethod
    def _network_plugins(rule, env, name, spec):
        plugin = spec.get("network_plugin")
        return [] if plugin in rule["allowed"] else [f"network plugin {plugin} is not permitted"]

    @staticmethod
    def _node_count(rule, env, name, spec):
        n = len(spec["nodes"])
        ok = rule.get("min", n) <= n <= rule.get("max", n)
        return [] if ok else [f"node count {n} outside {rule.get('min')}..{rule.get('max')}"]

    @staticmethod
    def _etcd_quorum(rule, env, name, spec):
        n = sum("etcd" in node["roles"] for node in spec["nodes"])
        ok = n % 2 == 1 and n >= rule.get("min", 3)
        return [] if ok else [f"etcd count {n} is not odd and >= {rule.get('min', 3)}"]

    @staticmethod
    def _node_addresses(rule, env, name, spec):
        nets = [ipaddress.ip_network(c) for c in rule.get("cidrs", [])]
        domains = [d.lower().strip(".") for d in rule.get("domains", [])]

        def fine(address: str) -> bool:
            if _is_ip(address):
                return any(ipaddress.ip_address(address) in net for net in nets)
            host = address.lower().rstrip(".")
            return any(host == d or host.endswith("." + d) for d in domains)

        addresses = [a for n in spec["nodes"] for a in (n["address"], n.get("internal_address"))]
        return [f"address {a} not permitted" for a in addresses if a and not fine(a)]

    @staticmethod
    def _etcd_snapshots(rule, env, name, spec):
        snaps = spec["etcd_snapshots"]
        if not snaps["enabled"]:
            return ["etcd snapshots are off"]
        found = []
        if snaps["interval_hours"] > rule.get("max_interval_hours", snaps["interval_hours"]):
            found.append("etcd snapshot interval too long")
        if snaps["retention_hours"] < rule.get("min_retention_hours", 0):
            found.append("etcd snapshot retention too short")
        return found

    @staticmethod
    def _customer_access(rule, env, name, spec):
        access = spec["customer"]["access"]
        return [] if access in rule["allowed"] else [f"customer access {access} not permitted"]

    @staticmethod
    def _protected_environments(rule, env, name, spec):
        return [f"{env} is protected from teardown"]


# --------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a stalled client cannot keep a thread past this

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError):
            self.server.owner._count("tls_failures")
            raise
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.owner._count("requests")
        self._json(405, {"error": "use POST /v1/validate"})

    def do_POST(self) -> None:
        owner = self.server.owner
        owner._count("requests")
        owner.last_headers = dict(self.headers.items())
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if owner._fault(self):
            return
        if self.path != "/v1/validate":
            return self._json(404, {"error": f"no such endpoint {self.path}"})
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return self._json(
                401, {"error": "bearer token required"}, {"WWW-Authenticate": "Bearer"}
            )
        if not hmac.compare_digest(token.strip().encode(), owner.token.encode()):
            return self._json(403, {"error": "token not accepted"})
        request = _request(body)
        if isinstance(request, str):
            return self._json(400, {"error": request})
        verdict = owner.rules.evaluate(*request)
        if owner.mode == "echo-token":
            verdict = _echo(token.strip(), owner.options.get("severity", "error"))
        if owner.mode == "deny":
            verdict["allowed"] = False
            verdict["violations"].append(
                {"rule": "lab-deny", "message": "the lab denies everything", "severity": "error"}
            )
        self._json(200, verdict)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _send(self, status, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


def _echo(token: str, severity: str) -> dict[str, Any]:
    """A verdict that quotes the caller's token, plain and base64 (as careless services do)."""
    encoded = base64.b64encode(token.encode()).decode()
    message = f"caller {token} may not do this (credential {encoded})"
    violation = {"rule": f"caller-{token}", "message": message, "severity": severity}
    return {"allowed": severity != "error", "violations": [violation], "version": f"v-{token}"}


def _bomb(size: int) -> bytes:
    """A tiny body that inflates to `size` zero bytes through two layers of gzip."""
    return gzip.compress(gzip.compress(bytes(size), 9), 9)


def _request(body: bytes) -> tuple[str, str, str, dict] | str:
    """The request's (kind, environment, name, spec), or what is wrong with it."""
    try:
        data = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if not isinstance(data, dict):
        return "body is not a JSON object"
    if data.get("kind") not in KINDS:
        return f"kind must be one of {KINDS}"
    for key in ("environment", "name"):
        if not isinstance(data.get(key), str) or not data[key]:
            return f"{key} must be a non-empty string"
    spec = data.get("spec")
    if not isinstance(spec, dict) or (data["kind"] == "rke-cluster" and "nodes" not in spec):
        return "spec must be an object (a ClusterSpec for rke-cluster)"
    return data["kind"], data["environment"], data["name"], spec


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close joins handler threads

    def __init__(self, owner: PolicyService, address: tuple[str, int]) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def get_request(self):
        sock, address = self.socket.accept()
        context = self.owner._context()
        return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address) -> None:
        pass  # failed handshakes and vanished clients are the faults under test


class PolicyService:
    """The lab policy service; a context manager. `set_mode` switches faults on and off.

    Modes (keyword arguments): normal, deny, error500(times=None), slow(delay=2),
    hang, refused, malformed, wrong-content-type, untrusted-cert, status429(retry_after=1,
    times=None), flaky(failures=2: answer 503 to the first N), status(code=400: answer that
    status), trickle(interval=1.4, lines=50: one header line per interval, then a valid
    answer), gzip-bomb(size=64 MiB: a body of a few hundred bytes that inflates to `size`
    through `Content-Encoding: gzip, gzip`), echo-token(severity="error": a verdict quoting the
    caller's token in its rule, message and version). `times=None` means every request.
    Since the last `set_mode`: `requests` counts HTTP requests, `tls_failures` failed
    handshakes, `aborted` answers the client hung up on; `last_headers` are the last
    request's headers.
    """

    def __init__(
        self,
        workdir: Path,
        token: str,
        rules_path: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.workdir = Path(workdir)
        self.token = token
        self.rules = Rules(Path(rules_path or DEFAULT_RULES))
        self.host, self.port = host, port
        self.mode, self.options = "normal", {}
        self.requests = self.tls_failures = self.aborted = self._failed = 0
        self.last_headers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_pem = ""

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_path(self) -> Path:
        return self.workdir / "policy-ca.pem"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._trusted, self.ca_pem = _server_context(self.workdir, "trusted", self.host)
        self._untrusted, _ = _server_context(self.workdir, "untrusted", self.host)
        self.ca_path.write_text(self.ca_pem)
        self._stopping.clear()
        self._listen()

    def stop(self) -> None:
        self._stopping.set()
        self._unlisten()

    def set_mode(self, mode: str, **options: Any) -> None:
        """Switch to `mode` (see the class doc) and reset the counters."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if mode == "gzip-bomb":  # made here, so that serving it allocates nothing large
            options["body"] = _bomb(options.get("size", 64 << 20))
        with self._lock:
            self.mode, self.options = mode, options
            self.requests = self.tls_failures = self.aborted = self._failed = 0
            self.last_headers = {}
        if mode == "refused":
            self._unlisten()
        elif self._server is None and not self._stopping.is_set():
            self._listen()

    def _listen(self) -> None:
        self._server = _Server(self, (self.host, self.port))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _context(self) -> ssl.SSLContext:
        return self._untrusted if self.mode == "untrusted-cert" else self._trusted

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def _failing(self, default_times: int | None) -> bool:
        """True while this mode should still fail (`times` failures, or always when None)."""
        times = self.options.get("times", self.options.get("failures", default_times))
        with self._lock:
            self._failed += 1
            return times is None or self._failed <= times

    def _trickle(self, handler: _Handler, interval: float, lines: int) -> None:
        """Send the status line, then one header line per `interval`, then a valid answer;
        count in `aborted` a client that hangs up meanwhile."""
        body = json.dumps({"allowed": True, "violations": []}).encode()
        try:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for n in range(lines):
                if self._stopping.wait(interval):
                    return
                handler.wfile.write(b"X-Trickle-%d: %d\r\n" % (n, n))
            handler.wfile.write(b"Content-Type: application/json\r\n")
            handler.wfile.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        except OSError:  # the client closed the connection (EPIPE, ECONNRESET, ssl EOF)
            self._count("aborted")
        handler.close_connection = True

    def _fault(self, handler: _Handler) -> bool:
        """Answer (or not) per the fault mode; True when the request is dealt with."""
        mode, options = self.mode, self.options
        if mode == "hang":
            while self.mode == "hang" and not self._stopping.wait(0.05):
                pass
            handler.close_connection = True
            return True
        if mode == "slow" and self._stopping.wait(options.get("delay", 2)):
            return True
        if mode == "error500" and self._failing(None):
            handler._json(500, {"error": "lab internal error"})
        elif mode == "flaky" and self._failing(2):
            handler._json(503, {"error": "lab temporarily unavailable"})
        elif mode == "status429" and self._failing(None):
            retry = {"Retry-After": str(options.get("retry_after", 1))}
            handler._json(429, {"error": "slow down"}, retry)
        elif mode == "status":
            handler._json(options.get("code", 400), {"error": "lab fixed status"})
        elif mode == "malformed":
            handler._send(200, b'{"allowed": true, "violations": [', "application/json")
        elif mode == "trickle":
            self._trickle(handler, options.get("interval", 1.4), options.get("lines", 50))
        elif mode == "gzip-bomb":
            encoding = {"Content-Encoding": "gzip, gzip"}
            handler._send(200, options["body"], "application/json", encoding)
        elif mode == "wrong-content-type":
            body = json.dumps({"allowed": True, "violations": []}).encode()
            handler._send(200, body, "text/html; charset=utf-8")
        else:
            return False
        return True
