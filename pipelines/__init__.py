"""Hydra entry points wiring the samdetr library to Ray (Data, Train, Tune) and MLflow."""
