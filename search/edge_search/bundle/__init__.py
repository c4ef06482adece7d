"""Deployable bundles: `export` writes them, `runtime` runs them (with numpy + onnxruntime only),
`promote` registers them in the MLflow model registry."""
