"""Trace replay: how many bytes an appliance keeps off the uplink.

``python -m bench.policy --trace FILE --capacity BYTES [--policy NAME|all]``
replays a request trace (``tracefile``: CSV ``time,key,size``) through the
appliance's own eviction, admission and make-room code (``edge.core.policy``,
``edge.core.admission``) and the nightly fill's manifest-from-logs and planner
(``fill.logs``, ``fill.plan``), in ``replay``; ``generate`` writes seeded
video-edge traces to try it on. docs/offload.md has the results.
"""
