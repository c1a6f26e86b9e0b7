"""Direct preference optimisation (Rafailov et al. 2023, arXiv:2305.18290) on the same stored
preference pairs as the reward model, against the same reference policy as PPO.

With the implicit reward r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x)) (sums over the
response tokens), the Bradley–Terry likelihood of the pairs gives the loss
-log sigmoid(r(x, y_w) - r(x, y_l)): no reward model, no sampling. `dpo.label_smoothing` eps
> 0 is the conservative variant (labels flipped with probability eps).

The policy starts from `init_from.workdir` (the SFT run); `prepare_state` copies it into the
frozen reference (model_state['ref'], checkpointed with the run). Dropout is off in both
passes, so the implicit reward of the starting policy is exactly 0. Data:
`shakespeare_preferences` (BOS prompt SEP response, response-only masks). Logged and evaluated
(held-out pairs): loss, accuracy (r_w > r_l), margin, chosen and rejected implicit rewards.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from research import configs, optim
from research.data import datasets
from research.data import tokenizers
from research.lm.family import LM
from research.train_state import TrainState


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
             label_smoothing: float = 0.0):
  """Per-pair DPO loss [B] and implicit rewards (chosen [B], rejected [B]) from sequence
  log-probs [B]."""
  r_w = beta * (policy_chosen - ref_chosen)
  r_l = beta * (policy_rejected - ref_rejected)
  margin = r_w - r_l
  loss = -(1 - label_smoothing) * jax.nn.log_sigmoid(margin) \
      - label_smoothing * jax.nn.log_sigmoid(-margin)
  return loss, r_w, r_l


class DPO(LM):

  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    c = super().config_defaults()
    c.dpo = ml_collections.ConfigDict()
    c.dpo.beta = 0.1              # the KL strength of the implicit reward
    c.dpo.label_smoothing = 0.0   # conservative DPO: assumed label noise in [0, 0.5)
    return c

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    super().validate_config(config)
    datasets.require_kind(config.data, 'preferences', 'DPO trains on preference pairs')
    configs.require(config.model.lora_rank == 0, 'model.lora_rank', config.model.lora_rank,
                    'LoRA is not supported by DPO yet; use 0 (or merge the adapters first)')
    configs.require(config.dpo.beta > 0, 'dpo.beta', config.dpo.beta, 'must be > 0')
    configs.require(0 <= config.dpo.label_smoothing < 0.5, 'dpo.label_smoothing',
                    config.dpo.label_smoothing, 'must be in [0, 0.5)')

  def init_state(self, key, batch):
    params = self.net.init(key, batch['tokens'][:1, :-1])['params']
    tx = optim.make(self.config.optimizer, self.config.train.num_steps,
                    moments_dtype=self.config.precision.moments)[0]
    return TrainState.create(params, tx, model_state={'ref': jax.tree.map(jnp.copy, params)},
                             ema_decay=self.config.optimizer.ema_decay,
                             ema_warmup=self.config.optimizer.ema_warmup)

  def prepare_state(self, state, mesh):
    return state.replace(model_state={'ref': jax.tree.map(jnp.copy, state.params)})

  def _logprobs(self, params, tokens, loss_mask):
    """Sum over the response tokens of log pi(token) [B] (temperature 1, no dropout)."""
    logits, _ = self.net.apply({'params': params}, tokens[:, :-1],
                               mask=tokens[:, :-1] != tokenizers.PAD)
    logp = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    return jnp.sum(logp * loss_mask, axis=1)

  def _pair(self, params, ref, batch):
    both = jnp.concatenate([batch['tokens'], batch['rejected']], 0)
    masks = jnp.concatenate([batch['loss_mask'], batch['rejected_loss_mask']], 0)
    n = batch['tokens'].shape[0]
    pol = self._logprobs(self.model_params(params), both, masks)
    ref = jax.lax.stop_gradient(self._logprobs(ref, both, masks))
    return dpo_loss(pol[:n], pol[n:], ref[:n], ref[n:], self.config.dpo.beta,
                    self.config.dpo.label_smoothing)

  def _loss(self, params, model_state, batch, key):
    del key
    loss, r_w, r_l = self._pair(params, model_state['ref'], batch)
    metrics = {'accuracy': jnp.mean((r_w > r_l).astype(jnp.float32)),
               'margin': jnp.mean(r_w - r_l), 'reward_chosen': jnp.mean(r_w),
               'reward_rejected': jnp.mean(r_l)}
    return jnp.mean(loss), (metrics, model_state)

  def objective(self, state):
    return self._loss

  def eval_step(self, state, batch, key):
    del key
    loss, r_w, r_l = self._pair(self.eval_params_of(state), state.model_state['ref'], batch)
    return {'loss': loss, 'accuracy': (r_w > r_l).astype(jnp.float32), 'margin': r_w - r_l,
            'reward_chosen': r_w, 'reward_rejected': r_l}
