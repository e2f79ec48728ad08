"""The watcher's pure half (issue 13): store every finished checkpoint once, never a partial one.

Sans-IO like the rest of the core: nothing here reads a clock or a file. The modules:

- ``observe``: what the shell reports about a unit's files (`FileObservation`,
  `CheckpointObservation`) and how many head/tail bytes to read (`head_wanted`, `tail_wanted`);
- ``detect``: which unit a path belongs to (`unit_for`) and whether a unit is finished
  (`check`, `detect` -> `Finished` / `NotYet` / `Ignore`), per format;
- ``naming``: a unit's checkpoint name and the include/exclude patterns (`Naming`);
- ``pending``: the queue (`WatchQueue`): inputs ``touched``, ``tick``, ``observed``,
  ``vanished``, ``hashed``, ``put_done``, ``scan_finished``, ``load``; effects `Observe`,
  `HashFiles`, `StartPut`, `Drop`, `Log`, `Persist`.

A shell (daemon or ``peerstore watch``) does: build ``WatchQueue(roots, Naming(prefix=...),
QueueSettings(settle_seconds=..., retry_seconds=...))``; ``load`` the persisted blob if any;
walk every root and ``touched`` each file (then ``scan_finished``); forward each filesystem
event as ``touched`` (both paths of a move); carry out the effects and answer each;
call ``tick`` at ``next_deadline()``. Paths given to the queue are relative to their root,
POSIX, normalised.
"""
