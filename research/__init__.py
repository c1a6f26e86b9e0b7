"""genlab: a JAX/Flax research codebase for generative models."""
