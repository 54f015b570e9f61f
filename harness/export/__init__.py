"""Build stage: the deployable artifact for a config (``stage.py``), its exporter, cache and parity check."""
