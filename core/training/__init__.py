"""Training and run folders: the TrainConfig (config), the loop (train), a run end to end (runs), the typed run
record (record), a run folder's files and live status (rundir), weights I/O (checkpoint), memory hand-back (memory)
and the on-disk queue in front of background runs (queue).

Imports core.inference, core.data, core.models and core.util.
"""
