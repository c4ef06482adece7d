"""Drivers decide which configurations to evaluate: Optuna (embedded, default) or Ray Tune."""
