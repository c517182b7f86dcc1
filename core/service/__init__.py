"""Background work: launching, resuming and stopping trainings (jobs), compressions (compress_jobs), sweeps on Ray
Tune (sweep) and campaigns of sweeps (campaign).

Imports the layers below it; only the pages, the views and the CLI import it.
"""
