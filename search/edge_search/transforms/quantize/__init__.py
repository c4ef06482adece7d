"""int8 and weight-only quantisation with ONNX Runtime, and the per-node sensitivity analysis that
mixed precision ranks nodes by."""
