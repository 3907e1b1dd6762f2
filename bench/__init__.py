"""Benchmarks and device checks; each runs from the repository root as
``python -m bench.<name>`` (docs/performance.md has the figures and the commands)."""
