"""The MLflow model of a checkpoint: packaging and registering it, the facts it carries, and the
evaluation records kept beside its versions.
"""
