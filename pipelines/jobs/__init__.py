"""Ray Jobs: the settings of a submission (address, runtime environment) that pipelines.submit
sends to a cluster.
"""
