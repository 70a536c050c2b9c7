"""Self-contained code that runs on the board (python3 + numpy + the runtime; no torch).

Nothing here imports ``rlprune_edge``: the folder is copied to a Raspberry Pi or Jetson and run
as ``python3 runner.py measure ...``. The host's local backends import the same modules, so local
and remote measurements follow one protocol.
"""
