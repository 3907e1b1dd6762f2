"""What every workflow shares: MLflow tracking (the one owner of MLflow's client and its global
state) and the console (Ray's start, quiet logs, progress lines).
"""
