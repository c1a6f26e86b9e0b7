"""A small CNN classifier: the project's offline feature network for sample-quality metrics."""
