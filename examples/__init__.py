"""Bring-your-own-model examples (importable as `examples.*` from the repository root)."""
