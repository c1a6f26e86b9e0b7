"""Diffusion models: DDPM / VDM / EDM training, noise schedules, samplers and likelihood."""
