"""One Ray Train run: its settings, preflight checks, run storage and resume record, the
TorchTrainer and the worker loop, and the pictures it logs.
"""
