"""The interface a generative family implements to plug into the harness.

The harness (`research/trainer.py`) owns the loop, devices, checkpoints, logging and the eval
cadence; a family only supplies pure functions. Every step function is written **per device**
(the pmap programming model): inside it the batch is this device's shard, the mesh axis
`parallel.AXIS` is bound, and cross-device reductions are explicit, e.g.
`lax.pmean(grads, parallel.AXIS)`. `research/train_state.py` has the standard one-optimizer step
that most families reuse.

Batches are dicts of arrays; image datasets give `image` (float32 in [0, 1], NHWC) and `label`.
"""
from __future__ import annotations

import abc
from typing import Any, Mapping

import jax
import ml_collections

from research import train_state

PyTree = Any
Metrics = Mapping[str, jax.Array]


class Family(abc.ABC):
  """A generative family. Construct with the full (validated) config."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  # --- config -------------------------------------------------------------------------------
  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    """The family's own sections/fields with defaults (merged into `configs.common_defaults`)."""
    return ml_collections.ConfigDict()

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    """Raises `configs.ConfigError` on an impossible value in the family's fields."""

  # --- pure functions (per device) ----------------------------------------------------------
  @abc.abstractmethod
  def init_state(self, key: jax.Array, batch: Mapping[str, jax.Array]) -> PyTree:
    """Builds the train state from an example (per-device) batch. The state is a pytree with a
    scalar `step` field; the harness replicates it on every device and checkpoints it whole."""

  def objective(self, state: PyTree):
    """The loss of a family with one objective, for this state (e.g. a KL warm-up by
    `state.step`): `loss_fn(params, model_state, batch, key) -> (loss, (metrics, model_state))`,
    per device. Such a family needs no `train_step`: the default one below runs the standard
    step on it, and the sharded path (`parallel.mode='sharded'`) is open to it. Families with
    several players (GAN, PPO) return None and write `train_step` themselves."""
    return None

  def train_step(self, state: PyTree, batch: Mapping[str, jax.Array],
                 key: jax.Array) -> tuple[PyTree, Metrics]:
    """One update. `key` is fresh at every step and the same on every device (derive noise with
    `parallel.per_example_keys` or `parallel.device_key`). Returned metrics are scalars already
    averaged over `AXIS`."""
    loss_fn = self.objective(state)
    if loss_fn is None:
      raise NotImplementedError(f'{type(self).__name__}: define objective() or train_step()')
    return train_state.standard_train_step(loss_fn, state, batch, key,
                                           self.config.optimizer.grad_accum_steps)

  def sharding_rules(self) -> tuple[tuple[str, tuple], ...]:
    """Tensor-parallel rules for the sharded path: (regex over a parameter's path, one mesh axis
    name or None per dimension), first match wins, e.g. Megatron's column/row split of an MLP:
    ('mlp/up/kernel$', (None, 'model')), ('mlp/down/kernel$', ('model', None))."""
    return ()

  @abc.abstractmethod
  def eval_step(self, state: PyTree, batch: Mapping[str, jax.Array],
                key: jax.Array) -> Mapping[str, jax.Array]:
    """Per-example metrics, each of shape [local_batch]. The harness drops padded examples and
    averages over the whole eval split, so results do not depend on batch or device count."""

  def sample(self, state: PyTree, key: jax.Array, num: int) -> Mapping[str, jax.Array]:
    """`num` samples on this device as a dict of arrays with leading dim `num`. An `images`
    entry (NHWC in [0, 1]) is written as a PNG grid; everything is saved to `.npz`."""
    return {}

  def visualize(self, state: PyTree, batch: Mapping[str, jax.Array],
                key: jax.Array) -> Mapping[str, jax.Array]:
    """Optional image grids built from a data batch (e.g. reconstructions, interpolations):
    name -> [N, H, W, C] in [0, 1], one PNG each."""
    return {}

  def sample_settings(self) -> dict:
    """What makes `sample`'s output besides the parameters and key (a sampler and its steps,
    a temperature), recorded in the JSON beside each sample file. A non-empty 'tag' (a short
    name of the settings) goes into the file names, so samples that other settings drew from
    the same checkpoint are never overwritten, and `research.evaluate` scores each set apart.
    A 'config' entry holds `config.<section>` overrides that redraw the same kind of sample."""
    return {}

  def eval_params_of(self, state: PyTree) -> PyTree:
    """The parameter tree eval and sampling use (the EMA copy where the family keeps one).
    Step functions get the whole state and call this themselves."""
    return getattr(state, 'params', state)

  # --- host-side hooks ----------------------------------------------------------------------
  def apply_curriculum(self, batch: dict, value: float) -> dict:
    """Host-side transform of a batch by the curriculum value at the current step."""
    return batch

  def finalize_eval(self, means: Mapping[str, float]) -> dict:
    """Metrics derived from the split-wide means of `eval_step`'s outputs (ratios of sums, e.g.
    bits per token = mean nll sum / mean token count, exact for padded final batches)."""
    return {}

  def sample_text(self, samples: Mapping[str, Any]) -> list[str]:
    """Text of host-side samples (the LM decodes its tokens); written to samples/*.txt."""
    return []

  def prepare_state(self, state: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
    """A fresh run's state after init (and `init_from` transfer), before step 0; not called on
    resume (the checkpoint holds the whole state). RLHF: the frozen reference copies the
    starting policy, and the reward model is loaded from its run."""
    return state

  def host_metrics(self, outputs: Mapping[str, Any]) -> dict:
    """Per-example eval metrics computed on the host from `eval_step`'s outputs (numpy, leading
    dim = the global batch), e.g. a score of decoded text; must drop every output that is not
    one number per example. Runs before the harness averages."""
    return dict(outputs)

  def save_assets(self, workdir: str) -> None:
    """Writes what a run needs besides its checkpoints and config (the LM: its tokenizer) into
    `workdir`, once, on the first host, when training starts."""

  def host_eval(self, state: PyTree, eval_batches, key: jax.Array) -> dict:
    """Extra eval that is not a per-example mean (a family may override). Runs on the host
    with jitted pieces of its own; returns scalar metrics."""
    return {}
