"""Evaluation metrics: toy mode coverage (PacGAN), class coverage / label bias, memorization."""
