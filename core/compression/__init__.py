"""Compression: int8 and fp16 variants (quantize), pruning with fine-tuning (prune), and variants built and measured
against their parent (compress).

Imports core.training, core.inference, core.data, core.models and core.util.
"""
