"""The classifier family: a small CNN trained with softmax cross-entropy.

It exists to give sample-quality metrics a feature space when no Inception weights are
available offline: `research/evaluation/features.py` trains one per image dataset (deterministic
from the seed, cached) and uses its penultimate layer (`features_and_probs`) as the features and
its softmax as the class probabilities.
"""
from __future__ import annotations

from typing import Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from research import configs, optim, parallel, precision
from research.data import datasets
from research.family import Family
from research.train_state import TrainState


class CNN(nn.Module):
  """conv3x3-relu-maxpool2 per entry of `channels` (pooling while the map is >= 2 wide), then
  dense `feature_dim` + relu (the features), dropout, dense logits. Computes in `dtype`
  (`config.precision.compute`; params float32); features and logits are returned float32 (the
  logits accumulate in float32)."""
  channels: tuple[int, ...]
  feature_dim: int
  num_classes: int
  dropout: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for c in self.channels:
      x = nn.relu(nn.Conv(c, (3, 3), padding='SAME', dtype=self.dtype)(x))
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    features = nn.relu(nn.Dense(self.feature_dim, dtype=self.dtype)(x))
    h = nn.Dropout(self.dropout, deterministic=not train)(features)
    logits = nn.Dense(self.num_classes, **precision.f32_output(self.dtype))(h)
    return features.astype(jnp.float32), logits.astype(jnp.float32)


class Classifier(Family):

  # --- config -------------------------------------------------------------------------------
  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict()
    c.model.channels = '32,64'    # one conv3x3 + 2x2 max-pool per entry
    c.model.feature_dim = 128     # width of the penultimate layer (the feature space)
    c.model.dropout = 0.3         # before the feature layer and before the logits (train only)
    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 0        # a classifier draws no samples
    return c

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    m = config.model
    channels = configs.parse_list(m.channels, 'model.channels', int)
    configs.require(bool(channels) and all(c > 0 for c in channels), 'model.channels',
                    m.channels, 'needs one or more channel counts > 0, e.g. "32,64"')
    configs.require(m.feature_dim > 0, 'model.feature_dim', m.feature_dim, 'must be > 0')
    configs.require(0.0 <= m.dropout < 1.0, 'model.dropout', m.dropout, 'must be in [0, 1)')
    configs.require(config.eval.num_samples == 0, 'eval.num_samples', config.eval.num_samples,
                    'a classifier draws no samples; use 0')

  # --- helpers ------------------------------------------------------------------------------
  @property
  def num_classes(self) -> int:
    return datasets.DATASETS[self.config.data.name].num_classes

  def model(self) -> CNN:
    m = self.config.model
    return CNN(channels=tuple(configs.parse_list(m.channels, 'model.channels', int)),
               feature_dim=m.feature_dim, num_classes=self.num_classes, dropout=m.dropout,
               dtype=precision.compute_dtype(self.config))

  def features_and_probs(self, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(penultimate features [B, feature_dim], softmax probs [B, C]) of NHWC images in [0, 1];
    deterministic (no dropout), no mesh axis needed: works under plain `jax.jit`."""
    features, logits = self.model().apply({'params': params}, images, train=False)
    return features, jax.nn.softmax(logits, axis=-1)

  # --- pure functions (per device) ----------------------------------------------------------
  def init_state(self, key: jax.Array, batch: Mapping[str, jax.Array]) -> TrainState:
    x = batch['image']
    chex.assert_rank(x, 4)
    params = self.model().init(key, x[:1])['params']
    tx, _ = optim.make(self.config.optimizer, self.config.train.num_steps,
                       moments_dtype=self.config.precision.moments)
    return TrainState.create(params, tx, {}, ema_decay=self.config.optimizer.ema_decay,
                             ema_warmup=self.config.optimizer.ema_warmup)

  def objective(self, state: TrainState):
    model = self.model()

    def loss_fn(params, model_state, batch, key):
      _, logits = model.apply({'params': params}, batch['image'], train=True,
                              rngs={'dropout': parallel.device_key(key)})
      labels = batch['label'].astype(jnp.int32)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      acc = jnp.mean(jnp.argmax(logits, -1) == labels)
      return loss, ({'accuracy': acc}, model_state)
    return loss_fn

  def eval_step(self, state: TrainState, batch, key):
    _, logits = self.model().apply({'params': state.eval_params}, batch['image'], train=False)
    labels = batch['label'].astype(jnp.int32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {'accuracy': (jnp.argmax(logits, -1) == labels).astype(jnp.float32), 'nll': nll}

  def eval_params_of(self, state: TrainState):
    return state.eval_params
