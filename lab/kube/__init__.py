"""The lab's Kubernetes API servers: real HTTPS kube-apiserver stand-ins for lab clusters.

How it fits together
--------------------
- A `LabSupervisor` (lab.kube.supervisor) is owned by the test session or the demo. It listens on
  a unix socket named by `LAB_KUBE_SUPERVISOR` and runs every API server as threads of its own
  process: when it stops, or is killed, the servers are gone.
- The lab `rke up` asks it, once the control plane is up, to start the cluster's API server on
  `https://<first controlplane address>:6443`, with the cluster's PKI from `cluster.rkestate`
  (kube-ca, the kube-apiserver certificate and key RKE generated, the service-account token
  key). `rke remove` stops it. Without `LAB_KUBE_SUPERVISOR` the lab rke behaves as before:
  nothing listens on 6443 and rke reports no reachable Kubernetes API endpoint.
- The server's objects live in the etcd nodes' data directories (lab.kube.store), so etcd
  snapshots carry them, a restore brings them back and `rke remove` wipes them.

What it serves (lab.kube.apiserver)
-----------------------------------
TLS with RKE's kube-apiserver certificate; authentication by client certificates signed by
kube-ca (CN user, O groups) and by service-account token Secrets (legacy JWTs signed with RKE's
service-account key; deleting the Secret revokes the token); 401 Status otherwise. RBAC over
ClusterRoleBindings and RoleBindings with the bootstrap roles cluster-admin, admin, edit, view;
`system:masters` may do anything; 403 Status with kube's message. Discovery, `/version`,
`/livez`, `/readyz` (`?verbose`), CRUD, list (label and field selectors), merge, JSON and
strategic-merge patches (the last treated as a merge patch), server-side apply with
`managedFields` ownership and conflicts, namespace deletion that empties the namespace. No
watches: `?watch=true` gets 405 MethodNotAllowed and discovery lists no `watch` verb. Its
controllers: `default` ServiceAccount and `kube-root-ca.crt` in every namespace, tokens for
`kubernetes.io/service-account-token` Secrets, Running pods for Deployments, DaemonSets and
StatefulSets, pods of deleted owners collected.

Faults (the supervisor's socket, never the Kubernetes API): see lab.kube.supervisor.

Why not kmock's KubernetesEmulator: no TLS, no authentication or RBAC, no server-side apply
(docs/lab.md, "Why a hand-written API server").
"""
