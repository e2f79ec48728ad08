"""The deterministic failure laboratory: the real sans-IO core and Swim on a simulated
cluster. ``loop`` (clock, seeds), ``network``, ``disk``, ``content``, ``node``; ``cluster``
composes ``shell`` (the cores' effects), ``gossip_shell`` (Swim's), ``faults`` (the fault
API) and ``checks``; ``ledger`` and ``invariants`` judge a run, ``scenarios`` script them;
CLIs ``chaos``, ``measure`` and ``speed``."""
