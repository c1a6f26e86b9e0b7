r"""Preferences without people: simulated labelers compare two replies of the policy by the hidden
true reward (--true_reward: the lexicon count of research/rlhf/sentiment.py, or the dense gold
reward of research/rlhf/gold.py) with Bradley-Terry noise, and the pairs go to the record
store (research/records.py) with source='synthetic'.

  python -m research.rlhf.preferences --policy=workdirs/sft_dialogue --store=prefs.sqlite \
      --split=train --num_prompts=2000
  python -m research.rlhf.preferences --policy=workdirs/sft_dialogue --store=prefs.sqlite \
      --split=test --num_prompts=300

Prompts (`select_prompts`): the distinct prompt speeches of the 'shakespeare_dialogue' pairs
(`dialogue.pairs`) of --split, in an order shuffled by --seed, the first --num_prompts of them. The
'train' prompts leave out every speech that is also a 'test' prompt (short lines such as 'My
lord?' occur in both), so the two splits' prompts are disjoint and 'test' pairs are held out
from a reward model trained on 'train' pairs. The dataset reads the policy's data_dir/source.

Replies (`sample_responses`): the LM run in --policy (its config.json, its latest checkpoint via
`trainer.restore`, its eval parameters, i.e. EMA when it keeps one) continues
BOS + encode(prompt + '\n\n') -- the dialogue format the model was fine-tuned on
(research/data/dialogue.py), cut to its last max_len - max_new_tokens tokens (BOS kept) -- with the
KV-cache sampler at --temperature (0 = greedy). A reply ends at the first EOS (not part of the
text) or after --max_new_tokens tokens. Two replies per prompt.

Labels (`label_pairs`): a labeler prefers reply a to reply b with probability
sigmoid((r_a - r_b) / t), r = the true reward, t = --labeler_temperature (`bradley_terry`;
t = 0: the higher reward always wins and ties are a coin flip). Each pair is one
`RecordStore.add_preference` record: chosen/rejected, source='synthetic', labeler_id
'bradley_terry(t=...)' (stored hashed, like any labeler id), score = the labeler model's
probability of the choice it made, metadata {'split', 'task': the true reward's name,
'reward_chosen', 'reward_rejected', 'labeler_temperature', 'policy', 'policy_step',
'sampling_temperature', 'max_new_tokens', 'seed'}. All of a call's pairs are written in one
transaction.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from research import parallel, records, trainer
from research.data import dialogue
from research.evaluation import features
from research.lm import generate as gen
from research.rlhf import gold

DIALOGUE_DATASET = 'shakespeare_dialogue'
SPLITS = ('train', 'test')   # 'train' prompts exclude the 'test' ones (module docstring)
TASK = 'sentiment'   # the default true reward (gold.TRUE_REWARDS)


# ---------------------------------------------------------------------------------------------
# Simulated labelers


def preference_probability(reward_a, reward_b, temperature: float) -> np.ndarray:
  """P(a preferred to b) = sigmoid((r_a - r_b) / temperature), float64, broadcast; temperature 0
  gives 1 / 0 / 0.5 (ties)."""
  if not temperature >= 0:
    raise ValueError(f'labeler temperature must be >= 0, got {temperature}')
  diff = np.asarray(reward_a, np.float64) - np.asarray(reward_b, np.float64)
  if temperature == 0:
    return 0.5 * (1.0 + np.sign(diff))
  return 0.5 * (1.0 + np.tanh(diff / (2.0 * temperature)))   # sigmoid, overflow-free


def bradley_terry(rng: np.random.Generator, reward_a, reward_b, temperature: float) -> np.ndarray:
  """Simulated choices, bool (True = a preferred), one independent draw per pair:
  P(a > b) = sigmoid((r_a - r_b) / temperature). Temperature 0 is noiseless: the higher reward
  always wins, ties are broken by a fair coin."""
  p = preference_probability(reward_a, reward_b, temperature)
  return rng.random(p.shape) < p   # uniform in [0, 1): p = 1 always, p = 0 never


def labeler_id(temperature: float) -> str:
  return f'bradley_terry(t={float(temperature):g})'


def label_pairs(prompts: Sequence[str], responses_a: Sequence[str],
                responses_b: Sequence[str], rng: np.random.Generator, temperature: float,
                split: str, extra_metadata: dict | None = None, true_reward: str = TASK
                ) -> list[dict]:
  """One `RecordStore.add_preference` record (a dict of its keyword arguments) per
  (prompt, a, b): the Bradley-Terry labeler's choice by the true reward `true_reward` (a name
  in gold.TRUE_REWARDS; module docstring)."""
  if not len(prompts) == len(responses_a) == len(responses_b):
    raise ValueError(f'label_pairs: {len(prompts)} prompts, {len(responses_a)} replies a, '
                     f'{len(responses_b)} replies b; need one of each per pair')
  if true_reward not in gold.TRUE_REWARDS:
    raise ValueError(f'true_reward={true_reward!r}: use one of {sorted(gold.TRUE_REWARDS)}')
  reward_fn = gold.TRUE_REWARDS[true_reward]
  ra, rb = reward_fn(responses_a), reward_fn(responses_b)
  p_a = preference_probability(ra, rb, temperature)
  a_wins = bradley_terry(rng, ra, rb, temperature)
  who = labeler_id(temperature)
  records = []
  for i, prompt in enumerate(prompts):
    if a_wins[i]:
      chosen, rejected, r_c, r_r, p = responses_a[i], responses_b[i], ra[i], rb[i], p_a[i]
    else:
      chosen, rejected, r_c, r_r, p = responses_b[i], responses_a[i], rb[i], ra[i], 1 - p_a[i]
    records.append({
        'prompt': prompt, 'chosen': chosen, 'rejected': rejected, 'source': 'synthetic',
        'labeler_id': who, 'score': float(p),
        'metadata': {'split': split, 'task': true_reward, 'reward_chosen': float(r_c),
                     'reward_rejected': float(r_r),
                     'labeler_temperature': float(temperature), **(extra_metadata or {})}})
  return records


# ---------------------------------------------------------------------------------------------
# Prompts


def read_config(workdir: str):
  """The full config of the run in `workdir` (its config.json over the family's defaults, as
  research/evaluate.py reads a run)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no config.json in {workdir}: not a training run directory')
  with open(path) as f:
    config = features.config_from_json(json.load(f))
  if config.family != 'lm':
    raise ValueError(f'{workdir} is a {config.family!r} run; the policy must be an LM run')
  return config


def dialogue_data_config(policy_config):
  """The dialogue dataset's data config: the policy's data settings (data_dir, source,
  tokenizer) with data.name='shakespeare_dialogue'."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  data = ml_collections.ConfigDict(policy_config.data.to_dict())
  data.name = DIALOGUE_DATASET
  data.train_split, data.eval_split = 'train', 'test'
  return data


def select_prompts(data_cfg, split: str, num: int, seed: int) -> list[str]:
  """The first `num` distinct prompts of `split` in an order shuffled by `seed`; 'train' leaves
  out the prompts that are also 'test' prompts (module docstring)."""
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
  if num < 1:
    raise ValueError(f'num_prompts must be >= 1, got {num}')
  distinct = list(dict.fromkeys(p for p, _ in dialogue.pairs(data_cfg, split)))
  if split == 'train':
    held_out = {p for p, _ in dialogue.pairs(data_cfg, 'test')}
    distinct = [p for p in distinct if p not in held_out]
  if num > len(distinct):
    raise ValueError(f'num_prompts={num} but the {split!r} split has {len(distinct)} distinct '
                     'prompts')
  order = np.random.default_rng(seed).permutation(len(distinct))[:num]
  return [distinct[i] for i in order]


# ---------------------------------------------------------------------------------------------
# Replies


def load_policy(workdir: str, step: int = -1):
  """(config, family, state, step) of the LM run in `workdir` at `step` (-1 = the latest)."""
  config = read_config(workdir)
  exp, state, _, _ = trainer.restore(config, workdir, step)
  return config, exp.family, state, int(parallel.to_host(state.step))


def generate_responses(family, state, prompts: Sequence[str], key, *, num_per_prompt: int = 2,
                       max_new_tokens: int = 48, temperature: float = 0.7,
                       batch_size: int = 64) -> list[list[str]]:
  """`sample_responses` for a loaded policy (`load_policy`)."""
  import jax  # pylint: disable=g-import-not-at-top
  tok, cfg = family.tokenizer, family.model_cfg
  if num_per_prompt < 1 or batch_size < 1:
    raise ValueError(f'num_per_prompt={num_per_prompt} and batch_size={batch_size} must be >= 1')
  room = cfg.max_len - max_new_tokens
  if max_new_tokens < 1 or room < 2:
    raise ValueError(f'max_new_tokens={max_new_tokens} must be in [1, model max_len - 2 = '
                     f'{cfg.max_len - 2}] (the prompt needs BOS and one token)')
  # One prompt width (room): BOS and the prompt's end, left-padded; one compile for every batch.
  rows = [row for p in prompts for row in [dialogue.encode_prompt(tok, p, room)] * num_per_prompt]
  if not rows:
    return []
  batch = min(batch_size, len(rows))
  params = family.model_params(family.eval_params_of(state))
  apply_fn = family._bound_apply  # pylint: disable=protected-access
  texts = []
  for b, start in enumerate(range(0, len(rows), batch)):
    chunk = rows[start:start + batch]
    n = len(chunk)
    tokens = np.stack(chunk + [chunk[0]] * (batch - n))   # pad the last batch
    mask = tokens != tok.pad_id
    out = gen.generate(apply_fn, params, tokens, mask, jax.random.fold_in(key, b),
                       max_new_tokens=max_new_tokens,
                       temperature=temperature if temperature > 0 else 1.0,
                       greedy=not temperature > 0, eos_id=tok.eos_id, pad_id=tok.pad_id, cfg=cfg)
    out_tokens, out_mask = np.asarray(out['tokens'])[:n], np.asarray(out['mask'])[:n]
    for t, m in zip(out_tokens, out_mask):
      real = t[m > 0]
      stop = np.flatnonzero(real == tok.eos_id)
      texts.append(tok.decode(real[:stop[0]] if len(stop) else real))
  return [texts[i:i + num_per_prompt] for i in range(0, len(texts), num_per_prompt)]


def sample_responses(workdir: str, prompts: Sequence[str], key, num_per_prompt: int = 2,
                     max_new_tokens: int = 48, temperature: float = 0.7,
                     batch_size: int = 64) -> list[list[str]]:
  """`num_per_prompt` replies of the LM run in `workdir` to each prompt (a speech; the turn
  separator is added here), as strings: out[i][j] is reply j to prompts[i]. `key` is a JAX PRNG
  key (batch b samples with fold_in(key, b)); temperature 0 decodes greedily. Rows are batched
  `batch_size` at a time, the last batch padded."""
  _, family, state, _ = load_policy(workdir)
  return generate_responses(family, state, prompts, key, num_per_prompt=num_per_prompt,
                            max_new_tokens=max_new_tokens, temperature=temperature,
                            batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# The command


def run(policy: str, store: str, split: str, num_prompts: int, *, temperature: float = 0.7,
        max_new_tokens: int = 48, labeler_temperature: float = 1.0, seed: int = 0,
        batch_size: int = 64, verbose: bool = True, true_reward: str = TASK) -> dict:
  """The CLI: prompts of `split`, two replies each from `policy`, labels, one transaction into
  the record store at `store`. Returns (and prints) a summary."""
  import jax  # pylint: disable=g-import-not-at-top
  config = read_config(policy)
  prompts = select_prompts(dialogue_data_config(config), split, num_prompts, seed)
  _, family, state, step = load_policy(policy)
  split_index = SPLITS.index(split)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), split_index)
  replies = generate_responses(family, state, prompts, key, num_per_prompt=2,
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               batch_size=batch_size)
  extra = {'policy': os.path.abspath(policy), 'policy_step': step,
           'sampling_temperature': float(temperature), 'max_new_tokens': int(max_new_tokens),
           'seed': int(seed)}
  recs = label_pairs(prompts, [r[0] for r in replies], [r[1] for r in replies],
                     np.random.default_rng([seed, split_index]), labeler_temperature, split,
                     extra, true_reward)
  with records.RecordStore(store) as s:
    ids = s.add_preferences(recs)
    total = s.count('preferences', source='synthetic')
  rewards = np.array([[r['metadata']['reward_chosen'], r['metadata']['reward_rejected']]
                      for r in recs], np.float64)
  summary = {
      'split': split, 'prompts': len(prompts), 'pairs': len(ids), 'ids': ids,
      'synthetic_pairs_in_store': total, 'policy_step': step,
      'mean_reward': float(rewards.mean()),
      'mean_reward_chosen': float(rewards[:, 0].mean()),
      'mean_reward_rejected': float(rewards[:, 1].mean()),
      'tie_fraction': float(np.mean(rewards[:, 0] == rewards[:, 1])),
      'identical_reply_fraction': float(np.mean([r['chosen'] == r['rejected'] for r in recs])),
  }
  if verbose:
    print(f"{summary['pairs']} {split} pairs from {summary['prompts']} prompts (policy step "
          f"{step}) -> {store} ({total} synthetic pairs in the store)")
    print(f"mean true reward {summary['mean_reward']:+.3f} (chosen "
          f"{summary['mean_reward_chosen']:+.3f}, rejected {summary['mean_reward_rejected']:+.3f}"
          f"), ties {summary['tie_fraction']:.1%}, identical replies "
          f"{summary['identical_reply_fraction']:.1%}")
  return summary


def _define_flags():
  """Flags exist only when this module is the command (importing it defines none)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('policy', None, 'The LM run (workdir) whose replies are compared.')
  flags.DEFINE_string('store', None, 'The record store (SQLite file; created if missing).')
  flags.DEFINE_enum('split', 'train', list(SPLITS), 'Prompts from this dialogue split.')
  flags.DEFINE_integer('num_prompts', None, 'Prompts (one preference pair each).')
  flags.DEFINE_float('temperature', 0.7, 'Sampling temperature of the policy (0 = greedy).')
  flags.DEFINE_integer('max_new_tokens', 48, 'Longest reply, in tokens.')
  flags.DEFINE_float('labeler_temperature', 1.0,
                     'Bradley-Terry temperature of the simulated labelers (0 = noiseless).')
  flags.DEFINE_integer('seed', 0, 'Prompt order, sampling and labeling seed.')
  flags.DEFINE_integer('batch_size', 64, 'Replies generated per call.')
  flags.DEFINE_enum('true_reward', TASK, sorted(gold.TRUE_REWARDS),
                    'The hidden reward the labelers compare replies by.')
  flags.mark_flags_as_required(['policy', 'store', 'num_prompts'])


def main(argv):
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  run(f.policy, f.store, f.split, f.num_prompts, temperature=f.temperature,
      max_new_tokens=f.max_new_tokens, labeler_temperature=f.labeler_temperature, seed=f.seed,
      batch_size=f.batch_size, true_reward=f.true_reward)


if __name__ == '__main__':
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  _define_flags()
  _app.run(main)
