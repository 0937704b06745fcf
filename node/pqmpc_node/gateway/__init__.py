"""The SNI-routing TLS-passthrough gateway: how clients outside the cluster reach node APIs.

A NodePool with ``spec.externalAccess.mode: gateway`` gets one gateway (a Deployment
behind a LoadBalancer or NodePort Service). Each client connection's first TLS record,
the ClientHello, is read *without terminating TLS*: its server name
``<node-id>.<domain>`` (:func:`~pqmpc_node.gateway.routing.external_name`) picks the node
pod, whose IP the gateway reads from the Kubernetes API, and from then on bytes are
spliced both ways unchanged. PQ-TLS still ends at the node, whose certificate carries
the external name as a DNS SAN; input shares stay sealed end to end. The gateway holds no
key and imports no TLS library (``.importlinter``: gateway-never-terminates-tls).

Modules: :mod:`.clienthello` (pure: the ClientHello's server name),
:mod:`.routing` (pure: names, pod table, routing decisions), :mod:`.proxy` (asyncio: peek,
route, splice), :mod:`.podwatch` (the pool's pods from the API), ``python -m
pqmpc_node.gateway`` (the process). Nothing is imported here, so the pure parts can be
used without the I/O ones.
"""
