"""PPO fine-tuning of the LM against a reward, with a KL leash to the frozen reference policy
(Ziegler et al. 2019, arXiv:1909.08593): the harness's `train_step` is one whole PPO iteration,
jitted and data-parallel (per device, `lax.pmean` of the gradients):

  1. rollouts: the device's prompts are continued by the KV-cache sampler (research/lm/generate.py)
     at `rlhf.temperature` for `rlhf.response_len` tokens (EOS ends a reply), no top-k / top-p,
     so the policy's log-probs below are those of the distribution the tokens were drawn from;
  2. one teacher-forced pass of the policy (log-probs at the same temperature, values from the
     value head), one of the frozen reference (its log-probs, same temperature), and the reward
     (`rlhf.reward`): 'model' = the reward model of run `rlhf.reward_workdir` on
     BOS prompt SEP response (EOS left out, as in its training data), 'true' = the hidden true
     reward `rlhf.true_reward` of the decoded response itself (research/rlhf/gold.py; a host
     callback: the control arm that tells a weak reward model from a PPO problem), or 'token' =
     the fraction of the `response_len` slots holding token `rlhf.reward_token` (a test reward);
  3. rewards r_t = score [last token] - beta kl_t and GAE advantages (research/rlhf/ppo.py),
     whitened over the global batch; with `rlhf.normalize_score` the score is first shifted and
     scaled so that the starting policy's scores (the first iteration's rollouts, every
     device's) have mean 0 and std 1, as Ziegler et al. normalise their reward model, which
     makes beta and the KL target mean the same for any reward model;
  4. `ppo.epochs` passes over `ppo.minibatches` shuffled minibatches of the device's rollouts,
     each one optimizer update of the clipped policy loss + vf_coef * clipped value loss
     - ent_coef * entropy, means over every device's tokens;
  5. beta follows Ziegler's adaptive controller toward `ppo.kl_target` nats (0 = fixed beta).

The state is the standard TrainState: params = the policy LM tree plus the value head
(research/rlhf/heads.py, so `init_from.workdir=SFT_RUN` copies the policy and leaves the head
fresh at 0); model_state holds what is not trained: the reference LM tree ('ref', a copy of the
policy at the start, `prepare_state`), the reward model ('reward'), beta ('kl_coef') and the
score normalisation ('score_norm'). All of
it is checkpointed, so a resumed run continues with the same reference, reward model and beta.
`state.step` counts PPO iterations (the optimizer's schedule counts its updates:
num_steps * epochs * minibatches).

Dropout is off in every PPO forward pass: the ratio pi / pi_old must be exactly 1 before the first
update, and the rollout log-probs must be the policy's.

Logged per iteration (means over the global batch): score (reward model / token reward, before
normalisation),
kl (nats per rollout: the very sum of the per-token kl_t that entered the rewards), kl_coef
(the beta of this iteration), reward (score - beta kl), entropy, response_length, pg_loss,
vf_loss, clip_frac, approx_kl, value explained variance, and logprob_gap (largest |sampler -
teacher-forced| log-prob: numerical agreement of the two passes). Eval (held-out prompts, the
eval split of `shakespeare_prompts`): score, kl, response_length, and the true reward of the
synthetic task (research/rlhf/sentiment.py) of the decoded responses.
"""
from __future__ import annotations

import dataclasses

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from research import checkpoint as ckpt_lib
from research import configs, optim, parallel
from research.data import datasets, tokenizers
from research.lm import family as lm_family
from research.lm import generate as gen
from research.lm import model as model_lib
from research.rlhf import gold, heads, ppo
from research.train_state import TrainState, apply_gradients

REWARDS = ('model', 'true', 'token')


class PPO(lm_family.LM):

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.rm_net = None
    if config.rlhf.reward == 'model':
      rm_cfg = ml_collections.ConfigDict(lm_family.source_config(config.rlhf.reward_workdir))
      rm_model = lm_family.model_config(rm_cfg, self.tokenizer.vocab_size)
      # The reward model runs in this run's compute dtype (config.precision.compute).
      self.rm_net = model_lib.Transformer(dataclasses.replace(
          rm_model, dropout=0.0, attn_dropout=0.0, max_len=self.model_cfg.max_len,
          dtype=self.model_cfg.dtype))

  # --- config -------------------------------------------------------------------------------
  @classmethod
  def config_defaults(cls) -> ml_collections.ConfigDict:
    c = super().config_defaults()
    c.rlhf = ml_collections.ConfigDict()
    c.rlhf.reward = 'model'        # model: a reward-model run's score | true: rlhf.true_reward
                                   # itself (the control arm) | token: a test reward
    c.rlhf.reward_workdir = ''     # reward='model': the workdir of a `reward_model` run
    c.rlhf.reward_token = -1       # reward='token': the token id every response slot should hold
    c.rlhf.response_len = 48       # tokens sampled per rollout (EOS may end a reply earlier)
    c.rlhf.temperature = 0.7       # the sampling distribution of rollouts (and of the KL)
    c.rlhf.true_reward = 'sentiment'  # eval: the hidden score of decoded responses: sentiment |
                                      # gold (research/rlhf/gold.py) | '' = none
    c.rlhf.normalize_score = True  # score -> (score - mean) / std of the first iteration's
                                   # rollouts: the starting policy's scores are N(0, 1) (Ziegler)
    c.ppo = ml_collections.ConfigDict()
    c.ppo.kl_coef = 0.15           # beta at the start
    c.ppo.kl_target = 6.0          # adaptive beta toward this KL (nats per rollout); 0 = fixed
    c.ppo.kl_horizon = 10000       # the controller's horizon, in rollouts
    c.ppo.gamma = 1.0
    c.ppo.lam = 0.95
    c.ppo.clip_eps = 0.2           # policy ratio clip
    c.ppo.value_clip = 0.2         # value clip around the rollout's values (0 = off)
    c.ppo.vf_coef = 0.1
    c.ppo.ent_coef = 0.0
    c.ppo.epochs = 4               # passes over each batch of rollouts
    c.ppo.minibatches = 4          # optimizer updates per pass (per-device batch must divide)
    c.ppo.whiten_advantages = True
    return c

  @classmethod
  def validate_config(cls, config: ml_collections.ConfigDict) -> None:
    super().validate_config(config)
    r, p = config.rlhf, config.ppo
    datasets.require_kind(config.data, 'prompts', "PPO's batches are prompts")
    configs.one_of(r.reward, REWARDS, 'rlhf.reward')
    configs.one_of(r.true_reward, ('', *sorted(gold.TRUE_REWARDS)), 'rlhf.true_reward')
    configs.require(config.model.lora_rank == 0, 'model.lora_rank', config.model.lora_rank,
                    'LoRA is not supported by PPO yet; use 0 (or merge the adapters first)')
    configs.require(r.response_len > 0, 'rlhf.response_len', r.response_len, 'must be > 0')
    configs.require(r.temperature > 0, 'rlhf.temperature', r.temperature, 'must be > 0')
    max_len = config.model.max_len or config.data.seq_len
    configs.require(config.data.seq_len + r.response_len <= max_len, 'model.max_len',
                    config.model.max_len,
                    f'must hold the prompt (data.seq_len={config.data.seq_len}) plus the '
                    f'response (rlhf.response_len={r.response_len}); raise it or shorten those')
    if r.reward == 'model':
      configs.require(bool(r.reward_workdir), 'rlhf.reward_workdir', r.reward_workdir,
                      "reward='model' needs the workdir of a trained reward_model run")
      other = lm_family.source_config(r.reward_workdir) if os.path.isdir(r.reward_workdir) else None
      configs.require(other is not None and other.get('family') == 'reward_model',
                      'rlhf.reward_workdir', r.reward_workdir,
                      'is not a finished reward_model run (no saved config); train one with '
                      'experiments/rm_shakespeare_sentiment')
    elif r.reward == 'true':
      configs.require(bool(r.true_reward), 'rlhf.true_reward', r.true_reward,
                      "reward='true' trains on the hidden true reward: name it, e.g. 'gold'")
    else:
      configs.require(r.reward_token >= 0, 'rlhf.reward_token', r.reward_token,
                      "reward='token' needs a token id >= 0")
    for name in ('kl_coef', 'kl_target', 'kl_horizon', 'vf_coef', 'ent_coef', 'value_clip'):
      configs.require(p[name] >= 0, f'ppo.{name}', p[name], 'must be >= 0')
    configs.require(0 < p.clip_eps < 1, 'ppo.clip_eps', p.clip_eps, 'must be in (0, 1)')
    configs.require(0 < p.gamma <= 1 and 0 <= p.lam <= 1, 'ppo.lam', p.lam,
                    'gamma must be in (0, 1] and lam in [0, 1]')
    configs.require(p.epochs >= 1 and p.minibatches >= 1, 'ppo.minibatches', p.minibatches,
                    'epochs and minibatches must be >= 1')

  # --- state --------------------------------------------------------------------------------
  def init_state(self, key, batch):
    prompts = batch['tokens'][:1]
    lm = self.net.init(key, prompts)['params']
    params = dict(lm, **{heads.VALUE: heads.init_head(key, self.model_cfg.d_model, 0.0)})
    reward = {}
    if self.rm_net is not None:  # placeholder with the reward model's shapes (prepare_state)
      reward = dict(self.rm_net.init(key, prompts)['params'],
                    **{heads.REWARD: heads.init_head(key, self.rm_net.cfg.d_model, 0.0)})
    p, steps = self.config.ppo, self.config.train.num_steps
    tx = optim.make(self.config.optimizer, steps * p.epochs * p.minibatches,
                    moments_dtype=self.config.precision.moments)[0]
    # score_norm (shift, scale); scale 0 = not measured yet (the first iteration sets it).
    norm = [0.0, 0.0] if self.config.rlhf.normalize_score else [0.0, 1.0]
    frozen = {'ref': jax.tree.map(jnp.copy, lm), 'reward': reward,
              'kl_coef': jnp.asarray(p.kl_coef, jnp.float32),
              'score_norm': jnp.asarray(norm, jnp.float32)}
    return TrainState.create(params, tx, model_state=frozen)

  def prepare_state(self, state, mesh):
    """A fresh run (after init_from): the reference is a copy of the starting policy, the reward
    model the latest checkpoint of `rlhf.reward_workdir`."""
    frozen = dict(state.model_state)
    frozen['ref'] = jax.tree.map(jnp.copy, heads.split(state.params, heads.VALUE)[0])
    if self.rm_net is not None:
      src = self.config.rlhf.reward_workdir
      ckpt = ckpt_lib.Checkpointer(os.path.join(src, 'checkpoints'), read_only=True)
      tree = ckpt.model_params(None)
      ckpt.close()
      want = parallel.to_host(frozen['reward'])
      if jax.tree.structure(tree) != jax.tree.structure(want) or any(
          np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(tree),
                                                      jax.tree.leaves(want))):
        raise configs.ConfigError(
            f'config.rlhf.reward_workdir={src!r}: its checkpoint is not a reward model of the '
            'architecture in its config.json; point it at a finished reward_model run')
      frozen['reward'] = parallel.put_replicated(tree, mesh)
    return state.replace(model_state=frozen)

  def eval_params_of(self, state):
    return heads.split(state.params, heads.VALUE)[0]

  # --- rollouts -----------------------------------------------------------------------------
  def _policy(self, params, prompts, pmask, tokens, mask):
    """(log-probs [B, N] at the rollout temperature, entropy [B, N], values [B, N])."""
    lm, vhead = heads.split(params, heads.VALUE)
    logits, hidden, _ = heads.forward(self.net.apply, self.model_params(lm), prompts, pmask,
                                      tokens, mask)
    p = prompts.shape[1]
    logp, ent = heads.continuation_logprobs(logits, tokens, mask, p,
                                            self.config.rlhf.temperature)
    return logp, ent, heads.apply_head(vhead, hidden[:, p - 1:-1]) * mask

  def _score(self, reward_params, prompts, pmask, tokens, mask):
    r = self.config.rlhf
    if r.reward == 'token':
      return jnp.sum((tokens == r.reward_token) * mask, axis=1) / r.response_len
    if r.reward == 'true':
      return jax.pure_callback(self._host_true_reward,
                               jax.ShapeDtypeStruct(tokens.shape[:1], jnp.float32), tokens, mask)
    return heads.reward_score(self.rm_net.apply, reward_params, prompts, pmask, tokens, mask)

  def _host_true_reward(self, tokens, mask) -> np.ndarray:
    """The hidden true reward of each decoded response (on the host): float32 [B]."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    texts = [self.tokenizer.decode(t[m > 0].tolist()) for t, m in zip(tokens, mask)]
    return np.asarray(gold.TRUE_REWARDS[self.config.rlhf.true_reward](texts), np.float32)

  def rollout(self, state, prompts, key):
    """Samples responses and scores them: a dict of [B, ...] arrays (per device)."""
    r = self.config.rlhf
    pmask = prompts != tokenizers.PAD
    lm = self.eval_params_of(state)
    out = gen.generate(self._bound_apply, self.model_params(lm), prompts, pmask, key,
                       max_new_tokens=r.response_len, temperature=r.temperature,
                       eos_id=tokenizers.EOS, pad_id=tokenizers.PAD, cfg=self.model_cfg)
    tokens, mask = out['tokens'], out['mask']
    logp, ent, values = self._policy(state.params, prompts, pmask, tokens, mask)
    ref_logits, _, _ = heads.forward(self.net.apply, state.model_state['ref'], prompts, pmask,
                                     tokens, mask)
    ref_logp, _ = heads.continuation_logprobs(ref_logits, tokens, mask, prompts.shape[1],
                                              r.temperature)
    score = self._score(state.model_state['reward'], prompts, pmask, tokens, mask)
    norm = self._score_norm(state.model_state['score_norm'], score)
    rewards, kl = ppo.kl_penalized_rewards((score - norm[0]) / norm[1], logp, ref_logp, mask,
                                           state.model_state['kl_coef'])
    return {'prompts': prompts, 'prompt_mask': pmask, 'tokens': tokens, 'mask': mask,
            'logprobs': logp, 'values': values, 'entropy': ent, 'score': score, 'kl': kl,
            'ref_logprobs': ref_logp, 'rewards': rewards, 'sampler_logprobs': out['logprobs'],
            'score_norm': norm}

  def _score_norm(self, norm, score):
    """(shift, scale) for the scores: the stored ones, or, while unset (scale 0), the mean and
    std of this batch of scores over every device."""
    if not self.config.rlhf.normalize_score:
      return norm
    ax = parallel.AXIS
    mean = lax.pmean(jnp.mean(score), ax)
    std = jnp.sqrt(jnp.maximum(lax.pmean(jnp.mean(jnp.square(score)), ax) - mean ** 2, 1e-8))
    unset = norm[1] == 0
    return jnp.stack([jnp.where(unset, mean, norm[0]), jnp.where(unset, std, norm[1])])

  # --- the PPO iteration --------------------------------------------------------------------
  def train_step(self, state, batch, key):
    p, ax = self.config.ppo, parallel.AXIS
    k_gen, k_perm = jax.random.split(parallel.device_key(key))
    ro = self.rollout(state, batch['tokens'], k_gen)
    mask = ro['mask']
    adv, returns = ppo.gae(ro['rewards'], ro['values'], mask, p.gamma, p.lam)
    if p.whiten_advantages:
      adv = ppo.whiten(adv, mask, ax)
    data = {k: ro[k] for k in ('prompts', 'prompt_mask', 'tokens', 'mask', 'logprobs',
                               'values')}
    data.update(advantages=adv, returns=returns)

    b = batch['tokens'].shape[0]
    if b % p.minibatches:
      raise ValueError(f'per-device batch {b} does not divide into ppo.minibatches='
                       f'{p.minibatches}')
    perms = jnp.stack([jax.random.permutation(jax.random.fold_in(k_perm, e), b)
                       for e in range(p.epochs)]).reshape(p.epochs * p.minibatches, -1)

    def loss_fn(params, mb):
      logp, ent, values = self._policy(params, mb['prompts'], mb['prompt_mask'], mb['tokens'],
                                       mb['mask'])
      pg, stats = ppo.policy_loss(logp, mb['logprobs'], mb['advantages'], mb['mask'],
                                  p.clip_eps, ax)
      vf = ppo.value_loss(values, mb['values'], mb['returns'], mb['mask'], p.value_clip, ax)
      ent = ppo.masked_mean(ent, mb['mask'], ax)
      loss = pg + p.vf_coef * vf - p.ent_coef * ent
      return loss, dict(stats, pg_loss=pg, vf_loss=vf, loss=loss)

    def update(state, idx):
      mb = jax.tree.map(lambda x: x[idx], data)
      grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, mb)
      grads = lax.pmean(grads, ax)
      metrics = dict(lax.pmean(metrics, ax), grad_norm=optax.global_norm(grads))
      return apply_gradients(state, grads, state.model_state), metrics

    new_state, upd = lax.scan(update, state, perms)
    kl_seq = lax.pmean(jnp.mean(ro['kl'].sum(1)), ax)
    beta = state.model_state['kl_coef']
    new_beta = ppo.adaptive_kl_coef(beta, kl_seq, p.kl_target, p.kl_horizon,
                                    self.config.train.batch_size)
    new_state = new_state.replace(step=state.step + 1, model_state=dict(
        new_state.model_state, kl_coef=new_beta, score_norm=ro['score_norm']))
    gap = jnp.max(jnp.abs(ro['sampler_logprobs'] - ro['logprobs']) * mask)
    metrics = {
        'score': jnp.mean(ro['score']), 'kl': jnp.mean(ro['kl'].sum(1)), 'kl_coef': beta,
        'reward': jnp.mean(ro['rewards'].sum(1)),
        'entropy': ppo.masked_mean(ro['entropy'], mask, ax),
        'response_length': jnp.mean(mask.sum(1)),
        'explained_variance': ppo.explained_variance(ro['values'], returns, mask),
    }
    metrics = lax.pmean(metrics, ax)
    metrics['logprob_gap'] = lax.pmax(gap, ax)
    metrics.update(jax.tree.map(jnp.mean, upd))
    return new_state, metrics

  # --- eval ---------------------------------------------------------------------------------
  def eval_step(self, state, batch, key):
    ro = self.rollout(state, batch['tokens'], parallel.device_key(key))
    return {'score': ro['score'], 'kl': ro['kl'].sum(1), 'response_length': ro['mask'].sum(1),
            'tokens': ro['tokens'], 'token_mask': ro['mask']}

  def host_metrics(self, outputs: dict) -> dict:
    out = dict(outputs)
    tokens, mask = out.pop('tokens'), out.pop('token_mask')
    if self.config.rlhf.true_reward:
      texts = [self.tokenizer.decode(t[m > 0].tolist()) for t, m in zip(tokens, mask)]
      out['true_reward'] = gold.TRUE_REWARDS[self.config.rlhf.true_reward](texts)
    return out
