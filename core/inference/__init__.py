"""Inference on exported models: the ONNX contract and its Runtime sessions (onnx_io), photos end to end (photo),
face detection and alignment (faces) and the face-detection score (facescore).

Imports core.models, core.data and core.util.
"""
