"""Transforms: one deployment change to an ONNX model each (quantise, prune, fp16)."""
