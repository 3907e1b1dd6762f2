"""Moving the champion alias: the gate (a pure decision) and the workflow that scores the
challenger and the champion and applies the decision.
"""
