"""Autoregressive language models: a decoder-only transformer and KV-cache generation."""
