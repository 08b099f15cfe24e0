"""Stand-in for RKE1's `rke` CLI (v1.6.3), run as the `lab-rke` executable.

It follows rke's code paths and texts (docs/rke.md): urfave/cli v1 parsing, logrus output
on stdout, cluster.yml parsed like yaml.v2, rke's defaults and validation order, real x509 PKI,
SSH (paramiko) to every node, plain 0600 writes of `<name>.rkestate` and `kube_config_<name>`.
On the nodes it drives the `docker` stand-in (lab.docker): certificates land in the node's
`$LAB_NODE_ROOT/etc/kubernetes/ssl`, containers are recorded, `remove` empties rke's
directories. Kubernetes itself is modelled (see lab.rke.cluster). With a lab supervisor
(`LAB_KUBE_SUPERVISOR`, see lab.kube) `rke up` starts the cluster's API server on the first
control plane's `:6443` and talks to it as rke does; without one nothing listens there, so
`rke version` fails the way it does against a closed port.

Fault injection
---------------
`LAB_RKE_FAULTS` = path of a JSON file read at start (unset, missing or empty file: no fault):

- `fail_at`: a step name; the run fails there with a realistic FATA line (exit 1), after
  everything earlier was written (state file, kubeconfig, node files).
- `pause_at` + `pause_seconds` (default 30): sleep at the start of that step (to kill -9 or race).
- `slow_state_write`: true (about 3 s) or seconds: the rkestate is written in 512-byte chunks with
  sleeps in between, so a kill can land mid-write and leave it torn.
- `addon_job_warning`: true, or an addon name: `level=warning msg="Failed to deploy addon execute
  job [rke-network-plugin]: Failed to get job complete status for job
  rke-network-plugin-deploy-job in namespace kube-system"`; the run still succeeds (exit 0).
- `k8s_timeout_seconds` (default 30, rke's GetStateTimeout): how long the legacy-cluster path
  waits for the Kubernetes API before falling back to the nodes. Timing only.

Steps, in the order `rke up` reaches them:

- `init`: ClusterInit, before the certificates are built and the state file is first written
  (FATA `[state] Failed to write state file: ...`; nothing written).
- `ssh`: TunnelHosts in ClusterUp; every etcd host unreachable (warnings, then FATA `Cluster must
  have at least one etcd plane host: failed to connect to the following etcd host(s) [...]`).
  The desired state is already written.
- `ports`: the KubeAPI port check (FATA `[network] Can't access KubeAPI port [6443] ...`); rke
  runs it only for a new cluster or when hosts were added.
- `certs`: certificate deployment to the nodes (FATA `[Failed to start Certificates deployer
  container on host [...]: ...]`).
- `etcd`: the etcd plane (FATA `[etcd] Failed to bring up Etcd Plane: etcd cluster is unhealthy`).
- `controlplane`: the control plane (FATA `[controlPlane] Failed to bring up Control Plane: ...`).
- `state`: after `currentState` was written locally, saving it to Kubernetes fails (FATA
  `[state] error updating secret: ...`).
- `worker`: the worker plane (FATA `[workerPlane] Failed to bring up Worker Plane: ...`).
- `addons`: the network plugin job, which rke treats as critical (FATA `Failed to get job complete
  status for job rke-network-plugin-deploy-job in namespace kube-system`).
- `remove`: `rke remove`, after the containers are gone and before the nodes' directories are
  cleaned; local files stay.
- `snapshot`: `etcd snapshot-save` on every etcd host (FATA `[etcd] Failed to take snapshot on all
  etcd hosts: ...`).
- `restore`: `etcd snapshot-restore`, after the nodes were cleaned, before etcd is restored.

`cert rotate` goes through `init` and `certs`; `etcd snapshot-restore` passes `remove` (it cleans
the nodes first), then `restore`, then a full `up` (all of its steps).
"""
