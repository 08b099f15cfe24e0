"""`lab-rke`: the rke v1.6.3 command line (main.go, cmd/*.go). Heavy imports are lazy."""

from __future__ import annotations

import sys

from lab.rke import cli
from lab.rke.errors import RkeError
from lab.rke.logrus import DEBUG, TRACE, log

VERSION = "v1.6.3"
USAGE = (
    "Rancher Kubernetes Engine, an extremely simple, lightning fast Kubernetes installer that "
    "works everywhere"
)

CONFIG = cli.Flag(
    "config", "Specify an alternate cluster YAML file", "string", "cluster.yml", "RKE_CONFIG"
)
COMMON = [
    cli.Flag("ssh-agent-auth", "Use SSH Agent Auth defined by SSH_AUTH_SOCK"),
    cli.Flag("ignore-docker-version", "Disable Docker version check"),
]
SNAPSHOT = [
    cli.Flag("name", "Specify snapshot name", "string"),
    CONFIG,
    cli.Flag("s3", "Enabled backup to s3"),
    cli.Flag("s3-endpoint", "Specify s3 endpoint url", "string", "s3.amazonaws.com"),
    cli.Flag("s3-endpoint-ca", "Specify a custom CA cert to connect to S3 endpoint", "string"),
    cli.Flag("access-key", "Specify s3 accessKey", "string"),
    cli.Flag("secret-key", "Specify s3 secretKey", "string"),
    cli.Flag("bucket-name", "Specify s3 bucket name", "string"),
    cli.Flag("region", "Specify the s3 bucket location (optional)", "string"),
    cli.Flag("folder", "Specify s3 folder name", "string"),
]


def _running() -> None:
    log.info(f"Running RKE version: {VERSION}")


def _load(ctx, lower: bool = False) -> tuple[dict, str]:
    from lab.rke import cluster

    path = ctx.string("config")
    text = cluster.resolve_cluster_file(path, lower)
    config = cluster.parse_config(text, lower)
    return cluster.set_options_from_cli(ctx, config), path


def _no_local_docker() -> RkeError:
    return RkeError(
        "Failed to connect to docker for local host [127.0.0.1]: Can't retrieve Docker Info: "
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker "
        "daemon running?"
    )


def up(ctx) -> None:
    from lab.rke import cluster

    _running()
    if ctx.bool("local") or ctx.bool("dind"):
        raise _no_local_docker()
    config, path = _load(ctx)
    flags = cluster.Flags(
        config_path=path,
        update_only=ctx.bool("update-only"),
        disable_port_check=ctx.bool("disable-port-check"),
        cert_dir=ctx.string("cert-dir"),
        custom_certs=ctx.bool("custom-certs"),
    )
    cluster.cluster_init(config, flags)
    if ctx.bool("init"):
        return
    cluster.cluster_up(flags)


def remove(ctx) -> None:
    from lab.rke import cluster

    _running()
    if ctx.bool("local"):
        raise _no_local_docker()
    path = ctx.string("config")
    text = cluster.resolve_cluster_file(path)
    if not ctx.bool("force"):
        sys.stdout.write("Are you sure you want to remove Kubernetes cluster [y/n]: ")
        sys.stdout.flush()
        line = sys.stdin.readline()
        if not line.endswith("\n"):
            raise RkeError("EOF")
        if line.strip() not in ("y", "Y"):
            return
    if ctx.bool("dind"):
        raise _no_local_docker()
    config = cluster.set_options_from_cli(ctx, cluster.parse_config(text))
    cluster.cluster_remove(config, cluster.Flags(config_path=path))


def version(ctx) -> None:
    from lab.rke import config as cfg
    from lab.rke import kube

    _running()
    try:
        text = kube.server_version(cfg.kube_config_path(ctx.string("config")))
    except kube.KubeError as exc:
        raise RkeError(str(exc)) from None
    sys.stdout.write(f"Server Version: {text}\n")


def config_cmd(ctx) -> None:
    import random

    from lab.rke import metadata

    if ctx.bool("system-images"):
        versions = [ctx.string("version") or metadata.DEFAULT_K8S_VERSION]
        if ctx.bool("all"):
            versions = list(metadata.CURRENT)
            random.shuffle(versions)  # built from a Go map
        for version in versions:
            images = metadata.system_images(version)
            if images is None:
                raise RkeError(f"k8s version is not supported, supported versions are: {versions}")
            log.info(f"Generating images list for version [{version}]:")
            for image in sorted(set(images.values())):
                sys.stdout.write(image + "\n")
        return
    if ctx.bool("list-version"):
        if not ctx.bool("all"):
            sys.stdout.write(metadata.DEFAULT_K8S_VERSION + "\n")
            return
        versions = list(metadata.CURRENT)
        random.shuffle(versions)  # built from a Go map: the order is random
        sys.stdout.write("".join(v + "\n" for v in versions))
        return
    if ctx.bool("empty"):
        text = _empty_config()
        if ctx.bool("print"):
            sys.stdout.write(f"Configuration File: \n{text}")
            return
        import os

        fd = os.open(ctx.string("name"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return
    sys.stdout.write("[+] Cluster Level SSH Private Key Path [~/.ssh/id_rsa]: ")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line.endswith("\n"):
        raise RkeError("EOF")
    raise RkeError("lab: interactive `rke config` is not modelled; use --empty")


def _empty_config() -> str:
    return (
        'nodes:\n- address: ""\n  port: ""\n  internal_address: ""\n  role: []\n'
        '  hostname_override: ""\n  user: ""\n  docker_socket: ""\n  ssh_key: ""\n'
        '  ssh_key_path: ""\n  ssh_cert: ""\n  ssh_cert_path: ""\n  labels: {}\n'
        '  taints: []\nservices: {}\nnetwork: {}\nauthentication: {}\naddons: ""\n'
        'addons_include: []\nsystem_images: {}\nssh_key_path: ""\nssh_cert_path: ""\n'
        "ssh_agent_auth: false\nauthorization: {}\nignore_docker_version: null\n"
        'enable_cri_dockerd: null\nkubernetes_version: ""\nprivate_registries: []\n'
        'ingress: {}\ncluster_name: ""\ncloud_provider: {}\nprefix_path: ""\n'
        'win_prefix_path: ""\naddon_job_timeout: 0\nbastion_host: {}\nmonitoring: {}\n'
        "restore: {}\nrotate_encryption_key: false\ndns: null\n"
    )


def snapshot_save(ctx) -> None:
    import time

    from lab.rke import cluster
    from lab.rke.logrus import rfc3339

    _running()
    config, path = _load(ctx, lower=True)
    name = ctx.string("name")
    if not name:
        name = f"rke_etcd_snapshot_{rfc3339(time.time())}"
        log.warning(f"Name of the snapshot is not specified, using [{name}]")
    cluster.snapshot_save(config, cluster.Flags(config_path=path), name)


def snapshot_restore(ctx) -> None:
    from lab.rke import cluster

    _running()
    config, path = _load(ctx, lower=True)
    name = ctx.string("name")
    if not name:
        raise RkeError("you must specify the snapshot name to restore")
    if name.endswith(".zip"):
        log.warning(
            f"The snapshot name [{name}] ends with the file extension (.zip) which is not needed, "
            "the snapshot name should be provided without the extension"
        )
    flags = cluster.Flags(
        config_path=path,
        use_local_state=ctx.bool("use-local-state"),
        cert_dir=ctx.string("cert-dir"),
        custom_certs=ctx.bool("custom-certs"),
    )
    cluster.snapshot_restore(config, flags, name)


def cert_rotate(ctx) -> None:
    from lab.rke import cluster

    _running()
    services = ctx.string_slice("service")
    rotate_ca = ctx.bool("rotate-ca")
    config, path = _load(ctx)
    config["rotate_certificates"] = {"cacertificates": rotate_ca, "services": services}
    flags = cluster.Flags(config_path=path)
    cluster.cluster_init(config, flags)
    cluster.cluster_up(flags)


def generate_csr(ctx) -> None:
    _running()
    _load(ctx)
    raise RkeError("lab: `rke cert generate-csr` is not modelled")


def rotate_key(ctx) -> None:
    from lab.rke import cluster

    _running()
    config, path = _load(ctx)
    cluster.rotate_encryption_key(config, cluster.Flags(config_path=path))


def get_state_file(ctx) -> None:
    from lab.rke import cluster

    cluster.get_state_file(ctx)


def get_kubeconfig(ctx) -> None:
    from lab.rke import cluster

    cluster.get_kubeconfig(ctx)


def build_app() -> cli.App:
    Flag, Command = cli.Flag, cli.Command
    up_flags = [
        CONFIG,
        Flag("local", "Deploy Kubernetes cluster locally"),
        Flag("dind", "Deploy Kubernetes cluster in docker containers (experimental)"),
        Flag(
            "dind-storage-driver",
            "Storage driver for the docker in docker containers (experimental)",
            "string",
        ),
        Flag(
            "dind-dns-server",
            "DNS resolver to be used by docker in docker container. Useful if host is running "
            "systemd-resovld",
            "string",
            "8.8.8.8",
        ),
        Flag("update-only", "Skip idempotent deployment of control and etcd plane"),
        Flag("disable-port-check", "Disable port check validation between nodes"),
        Flag("init", "Initiate RKE cluster"),
        Flag("cert-dir", "Specify a certificate dir path", "string"),
        Flag("custom-certs", "Use custom certificates from a cert dir"),
        *COMMON,
    ]
    remove_flags = [
        CONFIG,
        Flag("force", "Force removal of the cluster"),
        Flag("local", "Remove Kubernetes cluster locally"),
        Flag("dind", "Remove Kubernetes cluster deployed in dind mode"),
        *COMMON,
    ]
    restore_flags = [
        *SNAPSHOT,
        Flag("cert-dir", "Specify a certificate dir path", "string"),
        Flag("custom-certs", "Use custom certificates from a cert dir"),
        Flag(
            "use-local-state",
            "Use local state file (do not check or use snapshot archive for state file)",
        ),
        *COMMON,
    ]
    services = "kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, etcd"
    commands = [
        Command("up", "Bring the cluster up", up, up_flags),
        Command("remove", "Teardown the cluster and clean cluster nodes", remove, remove_flags),
        Command("version", "Show cluster Kubernetes version", version, [CONFIG]),
        Command(
            "config",
            "Setup cluster configuration",
            config_cmd,
            [
                Flag("name,n", "Name of the configuration file", "string", "cluster.yml"),
                Flag("empty,e", "Generate Empty configuration file"),
                Flag("print,p", "Print configuration"),
                Flag("system-images,s", "Generate the default system images"),
                Flag("list-version,l", "List the default kubernetes version"),
                Flag("all,a", "Used with -s and -l, get all available versions"),
                Flag(
                    "version",
                    "Generate the default system images for specific k8s versions",
                    "string",
                ),
            ],
        ),
        Command(
            "etcd",
            "etcd snapshot save/restore operations in k8s cluster",
            subcommands=[
                Command(
                    "snapshot-save",
                    "Take snapshot on all etcd hosts",
                    snapshot_save,
                    [*SNAPSHOT, *COMMON],
                ),
                Command(
                    "snapshot-restore", "Restore existing snapshot", snapshot_restore, restore_flags
                ),
            ],
        ),
        Command(
            "cert",
            "Certificates management for RKE cluster",
            subcommands=[
                Command(
                    "rotate",
                    "Rotate RKE cluster certificates",
                    cert_rotate,
                    [
                        CONFIG,
                        Flag(
                            "service",
                            f"Specify a k8s service to rotate certs, (allowed values: {services})",
                            "slice",
                        ),
                        Flag("rotate-ca", "Rotate all certificates including CA certs"),
                        *COMMON,
                    ],
                ),
                Command(
                    "generate-csr",
                    "Generate certificate sign requests for k8s components",
                    generate_csr,
                    [CONFIG, Flag("cert-dir", "Specify a certificate dir path", "string")],
                ),
            ],
        ),
        Command(
            "encrypt",
            "Manage cluster encryption provider keys",
            subcommands=[
                Command(
                    "rotate-key",
                    "Rotate cluster encryption provider key",
                    rotate_key,
                    [CONFIG, *COMMON],
                ),
            ],
        ),
        Command(
            "util",
            "Various utilities to retrieve cluster related files and troubleshoot",
            subcommands=[
                Command(
                    "get-state-file",
                    "Retrieve state file from cluster",
                    get_state_file,
                    [CONFIG, *COMMON],
                ),
                Command(
                    "get-kubeconfig",
                    "Retrieve kubeconfig file from cluster state",
                    get_kubeconfig,
                    [CONFIG, *COMMON],
                ),
            ],
        ),
    ]

    def before(ctx: cli.Context) -> None:
        if ctx.bool("quiet"):
            log.quiet = True
        else:
            if ctx.bool("debug"):
                log.level = DEBUG
                log.debug("Loglevel set to [debug]")
            if ctx.bool("trace"):
                log.level = TRACE
                log.trace("Loglevel set to [trace]")

    return cli.App(
        name="rke",
        version=VERSION,
        usage=USAGE,
        author="Rancher Labs, Inc.",
        commands=commands,
        flags=[
            Flag("debug,d", "Debug logging"),
            Flag(
                "quiet,q", "Quiet mode, disables logging and only critical output will be printed"
            ),
            Flag("trace", "Trace logging"),
        ],
        before=before,
    )


def main(argv: list[str] | None = None) -> None:
    from lab.rke.faults import faults

    argv = list(sys.argv if argv is None else argv)
    try:
        loaded = faults.load()
        faults.__dict__.update(loaded.__dict__)
    except (ValueError, OSError) as exc:
        log.fatal(f"lab: LAB_RKE_FAULTS: {exc}")
        sys.exit(1)
    try:
        build_app().run(argv)
    except cli.ExitError as exc:
        sys.stdout.flush()
        sys.stderr.write(f"{exc}\n")
        sys.stderr.flush()
        sys.exit(exc.code)
    except (RkeError, cli.UsageError) as exc:
        log.fatal(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # noqa: BLE001 - an unexpected failure: report it like a Go panic
        import traceback

        sys.stdout.flush()
        sys.stderr.write("panic: " + traceback.format_exc())
        sys.exit(2)
    sys.stdout.flush()
    sys.exit(0)


if __name__ == "__main__":
    main()
