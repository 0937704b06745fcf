"""Local stand-ins for a cluster, for pqmpc's tests and demo only.

A real kube-apiserver, etcd and kube-controller-manager (built from the Go module
proxy by ``scripts/build-control-plane.sh``) run as local processes, and a small
node agent plays kubelet for one fake Node by running each pod's command as a local
process on its own loopback address. The MPC engine's stand-ins live here too: all
parties of a session in one process (:mod:`pqmpc_local.mpc_simulation`) and a plain-TCP
channel for benchmarks (:mod:`pqmpc_local.tcp_channel`). Never shipped in the chart or
the image.
"""
