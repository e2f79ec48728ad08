"""The peerstore benchmark: ``python -m peerstore.bench --help``.

Puts and gets of a Llama-shaped checkpoint on a local cluster of real nodes, against
plain-copy baselines measured in the same run; see docs/performance.md.

Modules: ``runner`` (the phases), ``baselines`` (cp/dd + sync), ``procstat`` (CPU and
RSS from /proc), ``commands`` (timed subprocesses), ``throttle`` (a slow node),
``sources`` (cached checkpoints), ``codec`` (zfec and BLAKE3 throughput, no I/O), ``repair``
(lose a node for good, time the repair; ``--only repair``), ``report`` (table, JSON, aims),
``cli``.
"""
