"""The int8 recipe's choices by name, without torch or ONNX Runtime: CompressConfig's flags and form list them at
`python -m core --help` time, and core.compression.quantize maps each onto onnxruntime.quantization's arguments."""

INT8_METHODS = ("static-qdq", "static-qoperator", "dynamic")
CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
# activations x weights: ONNX Runtime's x86 kernels sum uint8 x int8 products in saturating 16-bit pairs without
# VNNI; uint8 x uint8 and 7-bit weights (reduce_range) cannot saturate there (its quantisation docs)
INT8_TYPE_NAMES = ("u8s8", "u8u8", "s8s8", "u16s8")
