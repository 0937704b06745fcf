"""Local stand-ins for a cluster, for pqmpc's tests and demo only.

A real kube-apiserver, etcd and kube-controller-manager (built from the Go module
proxy by ``scripts/build-control-plane.sh``) run as local processes, and a small
node agent plays kubelet for one fake Node by running each pod's command as a local
process on its own loopback address. Never shipped in the chart or the image.
"""
