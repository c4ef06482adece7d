"""Dashboards: compute plain data from a study (`data`), draw plotly figures (`figures`), write the
self-contained HTML report (`report`) and log it all to the study's MLflow parent run (`tracking`).

Import the submodules directly; this package imports nothing heavy on its own.
"""
