"""What the tests share: tiny configs and runs, local servers, data subsets, checks."""
