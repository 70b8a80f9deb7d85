// Package vk is banger-vk: a virtual-kubelet provider that makes one banger
// host a Kubernetes node, so many hosts are scheduled as one pool by the
// real scheduler, with ResourceQuota, RBAC, node health and kubectl coming
// from Kubernetes (docs/scale-out.md).
//
// A Pod is one VM on the local bangerd, found by its labels (LabelPodUID…),
// never by banger-vk's memory, so restarting banger-vk or bangerd re-adopts
// running VMs; a VM's name derives from the Pod's UID, so a Pod never gets
// two. The container's image is a banger image (or an OCI reference, pulled
// first), its resources the VM's size, its command a guest job. Logs, exec
// and port-forward reach the guest over SSH and its IP. A Pod evicted
// because its node went NotReady does not destroy its VM: the VM is kept,
// detached and labelled LabelEvicted.
//
// Only cmd/banger-vk imports it; it talks to bangerd through
// internal/client like the CLI, as the same user.
package vk
