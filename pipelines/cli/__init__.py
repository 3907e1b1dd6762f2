"""What only the entry points use: Hydra's config store of dataclass defaults, the submit command's
argument handling, and the demo's walkthrough.
"""
