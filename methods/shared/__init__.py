"""The machinery every method shares: the run pipeline, the training loop, heads, prompt plumbing, options, plots."""
