"""The appliance's rules, as pure functions and small classes.

Nothing here does I/O: no sockets, files, databases, event loops or clocks
(time is passed in). Ranges, conditional requests, freshness, keys, signing,
eviction and admission policy, the inventory filter, the circuit breaker's
arithmetic and the answer planner live here, so they can be tested
exhaustively and reused by fill/, steering/ and bench/.
tests/test_layers.py fails if a module here imports an I/O library.
"""
