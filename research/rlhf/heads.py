"""Scalar heads on the LM (research/lm/model.py) and the forward pass RLHF runs on rollouts.

Parameter trees: a reward model's or a PPO policy's parameters are the LM's own tree with one
extra top-level entry, the head (`REWARD` or `VALUE`: {'kernel': [d_model], 'bias': []}). So
`init_from.workdir=PRETRAINED_LM` copies every LM parameter by path with no param_map, the head
starting fresh, and `split(params, name)` gives back the plain LM tree that
`Transformer.apply` takes.

Sequences: a prompt [B, P] (left-padded: real tokens right-aligned, as generation uses) followed
by a continuation [B, N] with its mask (right-padded: 1 up to its last token). A right-padded
sequence [B, L] (the preference data) is the same thing with P = L and N = 0. Positions count
real tokens only (`model.default_positions`), so the two layouts give the same outputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from research.data import tokenizers
from research.lm import model as model_lib
from research.rlhf import ppo

REWARD = 'reward_head'
VALUE = 'value_head'


def init_head(key, d_model: int, std: float) -> dict:
  """A linear scalar head: kernel N(0, std) (std 0: zeros, e.g. a value head that starts at 0)."""
  kernel = std * jax.random.normal(key, (d_model,), jnp.float32) if std else jnp.zeros(d_model)
  return {'kernel': kernel, 'bias': jnp.zeros((), jnp.float32)}


def split(params: dict, name: str) -> tuple[dict, dict]:
  """(the LM's parameter tree, the head `name`) of a tree holding both."""
  if name not in params:
    raise KeyError(f'no {name!r} in the parameter tree (keys: {sorted(params)})')
  return {k: v for k, v in params.items() if k != name}, params[name]


def apply_head(head: dict, hidden):
  """[..., d_model] -> [...]."""
  return hidden @ head['kernel'] + head['bias']


def last_index(mask):
  """Index [B] of each row's last True entry (0 for an empty row)."""
  t = mask.shape[1]
  return jnp.max(jnp.where(mask, jnp.arange(t)[None], 0), axis=1)


def forward(apply_fn, params, prompts, prompt_mask, tokens=None, mask=None, *,
            deterministic: bool = True, rngs=None):
  """Logits and hidden states over prompt + continuation: (logits [B, P+N, V],
  hidden [B, P+N, d], full mask [B, P+N]). `apply_fn` is `Transformer(cfg).apply`."""
  if tokens is None:
    seq, full_mask = prompts, prompt_mask.astype(bool)
  else:
    seq = jnp.concatenate([prompts, tokens.astype(prompts.dtype)], axis=1)
    full_mask = jnp.concatenate([prompt_mask.astype(bool), mask.astype(bool)], axis=1)
  logits, _, hidden = apply_fn({'params': params}, seq,
                               positions=model_lib.default_positions(full_mask), mask=full_mask,
                               deterministic=deterministic, rngs=rngs, return_hidden=True)
  return logits, hidden, full_mask


def continuation_logprobs(logits, tokens, mask, prompt_len: int, temperature: float):
  """log softmax(logits / temperature) of the continuation tokens [B, N] (0 where mask is 0), and
  the entropy [B, N] of those distributions: the ones the tokens were sampled from."""
  step_logits = logits[:, prompt_len - 1:-1].astype(jnp.float32) / temperature
  logp = jax.nn.log_softmax(step_logits)
  logp = jnp.take_along_axis(logp, tokens[..., None].astype(jnp.int32), -1)[..., 0]
  return jnp.where(mask > 0, logp, 0.0), ppo.entropy(step_logits) * mask


def sequence_score(head: dict, hidden, mask):
  """A reward model's score [B]: the head on the hidden state of each row's last real token."""
  idx = last_index(mask)
  return apply_head(head, jnp.take_along_axis(hidden, idx[:, None, None], 1)[:, 0])


def reward_score(apply_fn, reward_params, prompts, prompt_mask, tokens, mask):
  """A reward model's score [B] of sampled continuations: the continuation's EOS (if any) is
  left out, as in the preference data it was trained on (BOS prompt SEP response, no EOS)."""
  lm, head = split(reward_params, REWARD)
  text_mask = mask * (tokens != tokenizers.EOS)
  _, hidden, full = forward(apply_fn, lm, prompts, prompt_mask, tokens, text_mask)
  return sequence_score(head, hidden, full)
