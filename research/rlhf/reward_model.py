"""The reward model: the LM with a scalar head, trained on preference pairs with the
Bradley–Terry loss (Christiano et al. 2017; Ziegler et al. 2019; Stiennon et al. 2020).

r(x, y) = head(h_last), the head (research/rlhf/heads.py) on the final hidden state of the last
token of `BOS prompt SEPARATOR response` (no EOS: the preference data's format). The pair
(chosen y_w, rejected y_l) has probability sigmoid(r(x, y_w) - r(x, y_l)) under Bradley–Terry,
so the loss is -log sigmoid(r_w - r_l), averaged over pairs. Rewards are only defined up to a
constant; `reward.center_coef` adds coef * mean((r_w + r_l)^2) to keep them near 0 (trl's
`center_rewards_coefficient`), which PPO's value head and KL coefficient prefer.

Data: `shakespeare_preferences` (research/data/preferences.py), pairs read from the record store at
`data.records`. Eval on its 'test' split: pair accuracy (r_w > r_l), loss and margin.
Initialise from a pretrained or fine-tuned LM run with `init_from.workdir` (the head is fresh).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from research import configs, optim, parallel
from research.data import datasets
from research.data import tokenizers
from research.lm import model as model_lib
from research.lm.family import LM
from research.rlhf import heads
from research.train_state import TrainState


class RewardModel(LM):

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    # A pair's sequences are seq_len + 1 tokens, all scored (RoPE: max_len is only a bound).
    self.model_cfg = dataclasses.replace(
        self.model_cfg, max_len=max(self.model_cfg.max_len, config.data.seq_len + 1))
    self.net = model_lib.Transformer(self.model_cfg)

  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    c = super().config_defaults()
    c.sample.max_new_tokens = 1   # unused: a reward model does not generate
    c.reward = ml_collections.ConfigDict()
    c.reward.center_coef = 0.0   # coef * mean((r_w + r_l)^2): keeps rewards centred on 0
    c.reward.head_init_std = 0.0  # 0: std 1 / sqrt(d_model + 1) (Ziegler et al.)
    return c

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    super().validate_config(config)
    datasets.require_kind(config.data, 'preferences', 'a reward model trains on preference pairs')
    configs.require(config.reward.center_coef >= 0, 'reward.center_coef',
                    config.reward.center_coef, 'must be >= 0 (0 = off)')
    configs.require(config.reward.head_init_std >= 0, 'reward.head_init_std',
                    config.reward.head_init_std, 'must be >= 0 (0 = 1 / sqrt(d_model + 1))')

  def init_state(self, key, batch):
    lm_params = self.net.init(key, batch['tokens'][:1, :-1])['params']
    d = self.model_cfg.d_model
    std = self.config.reward.head_init_std or (d + 1) ** -0.5
    params = dict(lm_params, **{heads.REWARD: heads.init_head(jax.random.fold_in(key, 1), d, std)})
    tx = optim.make(self.config.optimizer, self.config.train.num_steps,
                    moments_dtype=self.config.precision.moments)[0]
    return TrainState.create(params, tx, ema_decay=self.config.optimizer.ema_decay,
                             ema_warmup=self.config.optimizer.ema_warmup)

  def scores(self, params, tokens, *, train: bool = False, key=None):
    """r(x, y) [B] of right-padded sequences [B, L] (pad never occurs in text)."""
    lm_params, head = heads.split(params, heads.REWARD)
    mask = tokens != tokenizers.PAD
    rngs = {'dropout': key} if train else None
    _, hidden, _ = heads.forward(self.net.apply, self.model_params(lm_params), tokens, mask,
                                 deterministic=not train, rngs=rngs)
    return heads.sequence_score(head, hidden, mask)

  def _pair_scores(self, params, batch, train=False, key=None):
    both = jnp.concatenate([batch['tokens'], batch['rejected']], axis=0)
    r = self.scores(params, both, train=train, key=key)
    n = batch['tokens'].shape[0]
    return r[:n], r[n:]

  def _loss(self, params, model_state, batch, key):
    r_w, r_l = self._pair_scores(params, batch, train=True, key=parallel.device_key(key))
    loss = -jnp.mean(jax.nn.log_sigmoid(r_w - r_l))
    metrics = {'accuracy': jnp.mean((r_w > r_l).astype(jnp.float32)),
               'margin': jnp.mean(r_w - r_l), 'bt_loss': loss,
               'reward_mean': jnp.mean(0.5 * (r_w + r_l))}
    if self.config.reward.center_coef:
      loss = loss + self.config.reward.center_coef * jnp.mean(jnp.square(r_w + r_l))
    return loss, (metrics, model_state)

  def objective(self, state):
    return self._loss

  def eval_step(self, state, batch, key):
    del key
    r_w, r_l = self._pair_scores(self.eval_params_of(state), batch)
    return {'accuracy': (r_w > r_l).astype(jnp.float32),
            'loss': -jax.nn.log_sigmoid(r_w - r_l), 'margin': r_w - r_l,
            'reward_chosen': r_w, 'reward_rejected': r_l}

  def sample(self, state, key, num: int):
    return {}   # a reward model does not generate
