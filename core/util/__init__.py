"""Shared small pieces every layer may use: project paths and atomic writes (fsutil), the seven class names
(classes), the server's environment settings (settings) and detached processes with their liveness (procs).

The bottom layer: it imports nothing else from core.
"""
