"""Convergence studies: several variants and seeds trained one after another, tracked under one
parent run, and their report.
"""
