"""FER Compact-CNN Explorer core library: architectures, data, training, checkpoints, ONNX and photo inference.

Kept import-light (no torch here) so `python -m core --help` and the app's first paint stay fast.
"""
from core.util.classes import CLASSES, NUM_CLASSES

__all__ = ["CLASSES", "NUM_CLASSES"]
__version__ = "0.1.0"
