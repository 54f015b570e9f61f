"""Perf stage: vamp-style throughput and latency (``stage.py``), the load generator, statistics, vamp's format."""
