"""Ray Tune sweeps over training runs: settings, the trial, the tuner and its scheduler, tracking
of the parent run, and the report.
"""
