"""The models: one registry of architecture families (archs) and their parameter/MAC summaries (summary).

Imports only core.util.
"""
