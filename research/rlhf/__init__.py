"""RLHF: preferences, reward model, PPO and DPO on the LM (research/lm)."""
