"""FER2013 class names in label order (a contract: ONNX outputs and every data reader use this order)."""

CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASSES)
