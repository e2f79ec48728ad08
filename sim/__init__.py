"""The deterministic failure laboratory: the real sans-IO core and Swim on a simulated
cluster. ``loop`` (clock, seeds), ``network``, ``disk``, ``node``, ``cluster`` (the shell),
``scenarios`` and ``invariants``; CLIs ``chaos``, ``measure`` and ``bench``."""
