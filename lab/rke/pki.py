"""rke's PKI (pki/pki.go, pki/services.go, pki/util.go, pki/cert) with real x509 via `cryptography`.

- RSA 2048 keys, PKCS#1 `RSA PRIVATE KEY` PEM; CAs self-signed with serial 0 (as Go's
  NewSelfSignedCACert does), 10 years; leaf certs signed with the CA's NotBefore and 10 years.
- Bundle entries carry rke's CertificatePKI JSON fields (certificatePEM, keyPEM, config, name,
  commonName, ouName, envName, path, keyEnvName, keyPath, configEnvName, configPath).
- rke quirks kept: kube-node reuses kube-proxy's key, kube-service-account-token is the
  kube-apiserver cert and key, kube-admin is re-signed (same key) on every `up`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import secrets
import warnings
from concurrent.futures import ThreadPoolExecutor

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# rke's CAs have serial 0 (Go's NewSelfSignedCACert); cryptography warns when it parses one.
warnings.filterwarnings("ignore", message="Parsed a serial number which wasn't positive")

CA = "kube-ca"
REQUEST_HEADER_CA = "kube-apiserver-requestheader-ca"
KUBE_API = "kube-apiserver"
KUBE_CONTROLLER = "kube-controller-manager"
KUBE_SCHEDULER = "kube-scheduler"
KUBE_PROXY = "kube-proxy"
KUBE_NODE = "kube-node"
KUBELET = "kube-kubelet"
ETCD = "kube-etcd"
ETCD_CLIENT = "kube-etcd-client"
ETCD_CLIENT_CA = "kube-etcd-client-ca"
API_PROXY_CLIENT = "kube-apiserver-proxy-client"
SA_TOKEN = "kube-service-account-token"
KUBE_ADMIN = "kube-admin"
CERT_PREFIX = "/etc/kubernetes/ssl/"
TEN_YEARS = datetime.timedelta(days=3650)


# --- keys and PEM -----------------------------------------------------------------------------
def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def new_keys(count: int) -> list[rsa.RSAPrivateKey]:
    if count <= 1:
        return [new_key() for _ in range(count)]
    with ThreadPoolExecutor(max_workers=min(count, 8)) as pool:
        return list(pool.map(lambda _: new_key(), range(count)))


def key_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_cert(pem: str) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        return None


def load_key(pem: str):
    if not pem:
        return None
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return None


# --- DER surgery: Go writes CA serial 0, which cryptography's builder refuses ------------------
def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_read(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the element at `pos`."""
    tag = data[pos]
    length = data[pos + 1]
    start = pos + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return tag, start, start + length


def _with_serial_zero(cert: x509.Certificate, key) -> x509.Certificate:
    der = cert.public_bytes(serialization.Encoding.DER)
    _, outer, _ = _der_read(der, 0)
    _, tbs_start, tbs_end = _der_read(der, outer)
    alg_pos = tbs_end
    _, _, alg_end = _der_read(der, alg_pos)
    algorithm = der[alg_pos:alg_end]
    pos = tbs_start
    _, _, version_end = _der_read(der, pos)  # [0] version
    _, _, serial_end = _der_read(der, version_end)
    content = der[tbs_start:version_end] + b"\x02\x01\x00" + der[serial_end:tbs_end]
    tbs = b"\x30" + _der_len(len(content)) + content
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    bits = b"\x00" + signature
    body = tbs + algorithm + b"\x03" + _der_len(len(bits)) + bits
    with warnings.catch_warnings():  # serial 0 is what RKE's CA has: the point of this function
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(b"\x30" + _der_len(len(body)) + body)


# --- certificates -----------------------------------------------------------------------------
def _name(cn: str, orgs: list[str] | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs or []]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def ca_cert(cn: str, key) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(public)
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + TEN_YEARS)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return _with_serial_zero(builder.sign(key, hashes.SHA256()), key)


def signed_cert(
    ca: x509.Certificate,
    ca_key,
    server: bool,
    cn: str,
    alt_names: tuple[list[str], list[str]] | None,
    key,
    orgs: list[str] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, orgs))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbelow(2**63 - 1) + 1)
        .not_valid_before(ca.not_valid_before_utc)
        .not_valid_after(now + TEN_YEARS)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    except x509.ExtensionNotFound:
        pass
    if alt_names and (alt_names[0] or alt_names[1]):
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in alt_names[0]]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in alt_names[1]]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def cert_alt_names(cert: x509.Certificate | None) -> tuple[list[str], list[str]] | None:
    if cert is None:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        san.get_values_for_type(x509.DNSName),
        [str(i) for i in san.get_values_for_type(x509.IPAddress)],
    )


# --- CertificatePKI ---------------------------------------------------------------------------
def kubeconfig_paths(url: str, cluster: str, component: str, ca: str, crt: str, key: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    api-version: v1\n"
        f'    certificate-authority: {ca}\n    server: "{url}"\n  name: "{cluster}"\n'
        f'contexts:\n- context:\n    cluster: "{cluster}"\n    user: "{component}-{cluster}"\n'
        f'  name: "{cluster}"\ncurrent-context: "{cluster}"\nusers:\n'
        f'- name: "{component}-{cluster}"\n  user:\n    client-certificate: {crt}\n'
        f"    client-key: {key}"
    )


def kubeconfig_data(url: str, cluster: str, component: str, ca: str, crt: str, key: str) -> str:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return (
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    api-version: v1\n"
        f'    certificate-authority-data: {b64(ca)}\n    server: "{url}"\n  name: "{cluster}"\n'
        f'contexts:\n- context:\n    cluster: "{cluster}"\n    user: "{component}-{cluster}"\n'
        f'  name: "{cluster}"\ncurrent-context: "{cluster}"\nusers:\n'
        f'- name: "{component}-{cluster}"\n  user:\n    client-certificate-data: {b64(crt)}\n'
        f"    client-key-data: {b64(key)}"
    )


def env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def cert_object(name: str, cn: str, ou: str, cert, key) -> dict:
    """rke's ToCertObject."""
    env = env_name(name)
    path = f"{CERT_PREFIX}{name}.pem"
    key_path = f"{CERT_PREFIX}{name}-key.pem"
    config = config_path = config_env = ""
    if name not in (CA, KUBE_API, SA_TOKEN) and ETCD not in name and KUBELET not in name:
        config = kubeconfig_paths(
            "https://127.0.0.1:6443", "local", name, f"{CERT_PREFIX}{CA}.pem", path, key_path
        )
        config_path = f"{CERT_PREFIX}kubecfg-{name}.yaml"
        config_env = f"KUBECFG_{env}"
    return {
        "certificatePEM": cert_pem(cert) if cert is not None else "",
        "keyPEM": key_pem(key) if key is not None else "",
        "config": config,
        "name": name,
        "commonName": cn or f"system:{name}",
        "ouName": ou,
        "envName": env,
        "path": path,
        "keyEnvName": f"{env}_KEY",
        "keyPath": key_path,
        "configEnvName": config_env,
        "configPath": config_path,
    }


def crt_name_for_host(host, prefix: str) -> str:
    address = host.internal_address if host.internal_address != host.address else host.address
    return f"{prefix}-{address.replace('.', '-').lower()}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def alt_names(hosts, cluster_domain: str, service_ips: list[str], sans: list[str]):
    ips: list[str] = []
    dns: list[str] = []
    for host in hosts:
        (ips if _is_ip(host.address) else dns).append(host.address)
        internal = host.node.get("internal_address", "")
        if internal and internal != host.address:
            (ips if _is_ip(internal) else dns).append(internal)
        name = host.node.get("hostname_override", "")
        if name and name != host.address:
            dns.append(name)
    for san in sans or []:
        (ips if _is_ip(san) else dns).append(san)
    ips.append("127.0.0.1")
    ips += service_ips
    dns += [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{cluster_domain}",
    ]
    return dns, [str(ipaddress.ip_address(i)) for i in ips]


def service_ips(service_range: str) -> list[str]:
    out = []
    for cidr in service_range.split(","):
        network = ipaddress.ip_network(cidr.strip(), strict=False)
        out.append(str(network.network_address + 1))
    return out


class Bundle:
    """A certificate bundle: name → entry dict, with parsed cert/key objects cached."""

    def __init__(self, entries: dict | None = None) -> None:
        self.entries: dict[str, dict] = dict(entries or {})

    def cert(self, name: str):
        return load_cert(self.entries.get(name, {}).get("certificatePEM", ""))

    def key(self, name: str):
        return load_key(self.entries.get(name, {}).get("keyPEM", ""))

    def has_cert(self, name: str) -> bool:
        return bool(self.entries.get(name, {}).get("certificatePEM"))

    def set(self, name: str, cn: str, ou: str, cert, key) -> dict:
        self.entries[name] = cert_object(name, cn, ou, cert, key)
        return self.entries[name]


class Generator:
    """pki.GenerateRKECerts / GenerateRKEServicesCerts / RotateRKECertificates."""

    def __init__(self, bundle: Bundle, cluster, log) -> None:
        self.bundle = bundle
        self.cluster = cluster
        self.log = log
        self._keys: list = []

    def _key(self, reuse):
        if reuse is not None:
            return reuse
        if self._keys:
            return self._keys.pop()
        return new_key()

    def prefetch(self, count: int) -> None:
        self._keys.extend(new_keys(count))

    def _hosts(self, role: str):
        from lab.rke.config import Host

        out = []
        for node in self.cluster.config.get("nodes") or []:
            if role in (node.get("role") or []):
                out.append(Host(node=node))
        return out

    # CA certificates
    def ca_certs(self) -> None:
        self.log.info("[certificates] Generating CA kubernetes certificates")
        key = self._key(None)
        self.bundle.set(CA, "", "", ca_cert(CA, key), key)
        self.request_header_ca()

    def request_header_ca(self) -> None:
        self.log.info(
            "[certificates] Generating Kubernetes API server aggregation layer requestheader "
            "client CA certificates"
        )
        key = self._key(None)
        self.bundle.set(REQUEST_HEADER_CA, "", "", ca_cert(REQUEST_HEADER_CA, key), key)

    def _ca(self):
        ca, ca_key = self.bundle.cert(CA), self.bundle.key(CA)
        if ca is None or ca_key is None:
            from lab.rke.errors import RkeError

            raise RkeError("CA Certificate or Key is empty")
        return ca, ca_key

    def kube_api(self, rotate: bool) -> None:
        ca, ca_key = self._ca()
        services = self.cluster.config["services"]
        names = alt_names(
            self._hosts("controlplane"),
            services["kubelet"]["cluster_domain"],
            service_ips(services["kube-api"]["service_cluster_ip_range"]),
            self.cluster.config.get("authentication", {}).get("sans") or [],
        )
        current = cert_alt_names(self.bundle.cert(KUBE_API))
        if current is not None and not rotate and _same(current, names):
            return
        self.log.info("[certificates] Generating Kubernetes API server certificates")
        key = self._key(None if rotate else self.bundle.key(KUBE_API))
        cert = signed_cert(ca, ca_key, True, KUBE_API, names, key)
        self.bundle.set(KUBE_API, "", "", cert, key)
        if self.bundle.key(SA_TOKEN) is None:
            self.log.info("[certificates] Generating Service account token key")
            self.bundle.set(SA_TOKEN, SA_TOKEN, "", cert, key)

    def service_token(self, rotate: bool) -> None:
        if self.bundle.has_cert(SA_TOKEN):
            return
        ca, ca_key = self._ca()
        key = self.bundle.key(SA_TOKEN) or self.bundle.key(KUBE_API)
        cert = signed_cert(ca, ca_key, False, SA_TOKEN, None, key)
        self.bundle.set(SA_TOKEN, SA_TOKEN, "", cert, key)

    def _client(self, name: str, label: str, rotate: bool, cn: str, orgs=None, reuse_from=None):
        if self.bundle.has_cert(name) and not rotate:
            return
        ca, ca_key = self._ca()
        self.log.info(f"[certificates] {label}")
        key = self._key(None if rotate else self.bundle.key(reuse_from or name))
        cert = signed_cert(ca, ca_key, False, cn, None, key, orgs)
        ou = orgs[0] if orgs else ""
        self.bundle.set(name, cn if orgs else "", ou, cert, key)

    def controller(self, rotate: bool) -> None:
        self._client(
            KUBE_CONTROLLER,
            "Generating Kube Controller certificates",
            rotate,
            f"system:{KUBE_CONTROLLER}",
        )

    def scheduler(self, rotate: bool) -> None:
        self._client(
            KUBE_SCHEDULER,
            "Generating Kube Scheduler certificates",
            rotate,
            f"system:{KUBE_SCHEDULER}",
        )

    def proxy(self, rotate: bool) -> None:
        self._client(
            KUBE_PROXY, "Generating Kube Proxy certificates", rotate, f"system:{KUBE_PROXY}"
        )

    def node(self, rotate: bool) -> None:
        # rke reuses kube-proxy's key for kube-node (pki/services.go)
        self._client(
            KUBE_NODE,
            "Generating Node certificate",
            rotate,
            "system:node",
            ["system:nodes"],
            reuse_from=KUBE_PROXY,
        )

    def admin(self, rotate: bool) -> None:
        self.log.info("[certificates] Generating admin certificates and kubeconfig")
        ca, ca_key = self._ca()
        from lab.rke.config import kube_config_path

        key = self._key(None if rotate else self.bundle.key(KUBE_ADMIN))
        cert = signed_cert(ca, ca_key, False, KUBE_ADMIN, None, key, ["system:masters"])
        entry = self.bundle.set(KUBE_ADMIN, KUBE_ADMIN, "system:masters", cert, key)
        control = self._hosts("controlplane")
        if control:
            entry["config"] = kubeconfig_data(
                f"https://{control[0].address}:6443",
                self.cluster.cluster_name,
                KUBE_ADMIN,
                cert_pem(ca),
                cert_pem(cert),
                key_pem(key),
            )
            entry["configPath"] = kube_config_path(self.admin_config_path)
        else:
            entry["config"] = ""

    admin_config_path = "cluster.yml"

    def proxy_client(self, rotate: bool) -> None:
        ca, ca_key = self.bundle.cert(REQUEST_HEADER_CA), self.bundle.key(REQUEST_HEADER_CA)
        if ca is None or ca_key is None:
            from lab.rke.errors import RkeError

            raise RkeError("Request Header CA Certificate or Key is empty")
        if self.bundle.has_cert(API_PROXY_CLIENT) and not rotate:
            return
        self.log.info("[certificates] Generating Kubernetes API server proxy client certificates")
        key = self._key(None if rotate else self.bundle.key(API_PROXY_CLIENT))
        cert = signed_cert(ca, ca_key, True, API_PROXY_CLIENT, None, key)
        self.bundle.set(API_PROXY_CLIENT, "", "", cert, key)

    def etcd(self, rotate: bool) -> None:
        ca, ca_key = self._ca()
        services = self.cluster.config["services"]
        hosts = self._hosts("etcd")
        names = alt_names(
            hosts,
            services["kubelet"]["cluster_domain"],
            service_ips(services["kube-api"]["service_cluster_ip_range"]),
            [],
        )
        for host in hosts:
            name = crt_name_for_host(host, ETCD)
            current = cert_alt_names(self.bundle.cert(name))
            if current is not None and not rotate and _same_sorted(current, names):
                continue
            key = self._key(None if rotate else self.bundle.key(name))
            self.log.info(f"[certificates] Generating {name} certificate and key")
            cert = signed_cert(ca, ca_key, True, ETCD, names, key)
            self.bundle.set(name, "", "", cert, key)
        wanted = {crt_name_for_host(h, ETCD) for h in hosts}
        for name in [n for n in self.bundle.entries if n.startswith(ETCD) and n not in wanted]:
            if name in (ETCD_CLIENT, ETCD_CLIENT_CA):
                continue
            self.log.info(f"[certificates] Deleting unused certificate: {name}")
            del self.bundle.entries[name]

    def services(self, rotate: bool) -> None:
        self.kube_api(rotate)
        self.service_token(rotate)
        self.controller(rotate)
        self.scheduler(rotate)
        self.proxy(rotate)
        self.node(rotate)
        self.admin(rotate)
        self.proxy_client(rotate)
        self.etcd(rotate)
        self.log.info(
            "[certificates] GenerateServingCertificate is disabled, checking if there are "
            "unused kubelet certificates"
        )
        for name in [n for n in self.bundle.entries if n.startswith(KUBELET)]:
            self.log.info(f"[certificates] Deleting unused kubelet certificate: {name}")
            del self.bundle.entries[name]

    def fresh(self) -> None:
        """GenerateRKECerts: a brand-new CA and every certificate."""
        etcd_count = len(self._hosts("etcd"))
        # CA, request header CA, apiserver, controller, scheduler, proxy, admin, proxy client
        self.prefetch(8 + etcd_count)
        self.ca_certs()
        self.services(False)

    def existing(self) -> None:
        """rebuildExistingState: keep the CA and keys, regenerate what changed."""
        if not self.bundle.has_cert(REQUEST_HEADER_CA):
            self.request_header_ca()
        self.services(False)

    def rotate(self, services: list[str], rotate_ca: bool) -> None:
        """cluster.RotateRKECertificates."""
        funcs = {
            "kube-apiserver": [self.kube_api],
            "kube-controller-manager": [self.controller],
            "kube-scheduler": [self.scheduler],
            "kube-proxy": [self.proxy],
            "kubelet": [self.node],
            "etcd": [self.etcd],
        }
        if rotate_ca:
            self.ca_certs()
            services = []
        for service in services:
            for fn in funcs.get(service, []):
                fn(True)
        if not services or services == [""]:
            token_key = self.bundle.key(SA_TOKEN)
            if not self.bundle.has_cert(REQUEST_HEADER_CA):
                self.request_header_ca()
            self.prefetch(8)
            self.services(True)
            if token_key is not None:
                self.bundle.set(SA_TOKEN, SA_TOKEN, "", self.bundle.cert(SA_TOKEN), token_key)


def _same(current, wanted) -> bool:
    return current[0] == wanted[0] and current[1] == wanted[1]


def _same_sorted(current, wanted) -> bool:
    return sorted(current[0]) == sorted(wanted[0]) and sorted(current[1]) == sorted(wanted[1])


def node_cert_names(cluster, host) -> list[str]:
    """pki.getCertKeys for the roles of one host (GenerateRKENodeCerts)."""
    names = [CA, KUBE_PROXY, KUBE_NODE]
    from lab.rke.config import Host

    nodes = cluster.config.get("nodes") or []
    for role in host.node.get("role") or []:
        if role == "etcd":
            for node in nodes:
                if "etcd" in (node.get("role") or []):
                    names.append(crt_name_for_host(Host(node=node), ETCD))
        elif role == "controlplane":
            names += [
                KUBE_API,
                SA_TOKEN,
                KUBE_CONTROLLER,
                KUBE_SCHEDULER,
                ETCD_CLIENT,
                ETCD_CLIENT_CA,
                REQUEST_HEADER_CA,
                API_PROXY_CLIENT,
            ]
    return names


def deployer_env(cluster, host, bundle: Bundle) -> list[str]:
    """The cert-deployer container's environment for one host (DeployCertificatesOnPlaneHost)."""
    env = []
    seen = set()
    for name in node_cert_names(cluster, host):
        entry = bundle.entries.get(name)
        if not entry or name in seen:
            continue
        seen.add(name)
        strip_key = name == CA and not host.is_control
        if entry.get("keyPEM") and not strip_key:
            env.append(f"{entry['keyEnvName']}={entry['keyPEM']}")
        if entry.get("certificatePEM"):
            env.append(f"{entry['envName']}={entry['certificatePEM']}")
        if entry.get("config") and entry.get("configEnvName"):
            env.append(f"{entry['configEnvName']}={entry['config']}")
    return env
