"""Evaluation of a text run (LM, SFT, PPO, DPO): what `python -m research.evaluate` reports for
text data, next to the image and 2-D metrics of `research/evaluate.py`.

- held-out: the family's own eval on its held-out split from the latest checkpoint (the LM:
  exact bits/char and perplexity; PPO: reward-model score, KL and the task's true reward of
  responses to held-out prompts). A stochastic eval (sampled responses) is repeated over
  `num_draws` keys: mean ± standard error; a deterministic one is run once (s.e. 0).
- samples: each draw of the run's sample set (`research/sample_sets.py`) decoded to text:
  distinct-1/2 (unique word n-grams / n-grams), repetition (seq-rep-4 over the model's tokens,
  Welleck et al. 2020), mean length, memorization (the longest span found verbatim in the
  training text; share of samples copying 50+ characters) and the task's true reward where the
  config defines one (`rlhf.true_reward`). Mean ± s.e. over the draws.
"""
from __future__ import annotations

import json
import time

import jax
import numpy as np

from research import configs, sample_sets, trainer
from research.data import corpus
from research.evaluation import memorization, stats, text_metrics
from research.rlhf import gold

COPY_CHARS = 50       # a sample copying this many training characters verbatim is flagged
MIN_OVERLAP = 10      # spans shorter than this count as no overlap
NUM_PASSAGES = 256    # held-out passages the samples' embedding similarity is measured against


def heldout(config, workdir: str, num_draws: int) -> dict:
  """The family's eval of the latest checkpoint: means (and `_se`) over draws of the eval key;
  one draw when the first two agree (nothing sampled)."""
  exp, state, eval_key, _ = trainer.restore(config, workdir, -1)
  runs = [trainer.evaluate(exp, state, eval_key)]
  for d in range(1, num_draws):
    runs.append(trainer.evaluate(exp, state, jax.random.fold_in(eval_key, d)))
    if d == 1 and runs[1] == runs[0]:
      runs = runs[:1]
      break
  out = stats.over_draws(runs)
  return {k: (0.0 if k.endswith('_se') and len(runs) == 1 else v) for k, v in out.items()}


def sample_metrics(texts: list[str], tokens: list[list[int]], train_text: str,
                   true_reward=None, grams: set[str] | None = None) -> dict:
  """One draw of decoded samples (and their token ids): diversity, repetition, length,
  memorization against `train_text` (`grams`: its MIN_OVERLAP-grams, built once per run), and
  `true_reward(texts)` if given."""
  overlaps = memorization.text_overlaps(texts, train_text, MIN_OVERLAP, grams)
  out = {'distinct_1': text_metrics.distinct_n(texts, 1),
         'distinct_2': text_metrics.distinct_n(texts, 2),
         'repetition_4': text_metrics.mean_repetition_rate(tokens, 4),
         'chars': float(np.mean([len(t) for t in texts])),
         'train_overlap_chars': float(np.mean(overlaps)),
         'copied_fraction': float(np.mean(overlaps >= COPY_CHARS))}
  if true_reward is not None:
    out['true_reward'] = float(np.mean(true_reward(texts)))
  return out


def heldout_passages(config, length: int, num: int = 2 * NUM_PASSAGES) -> list[str]:
  """`num` passages of `length` characters spread evenly over the held-out documents
  (config.data.eval_split of the run's corpus)."""
  text = '\n'.join(t for _, t in corpus.documents(config.data, config.data.eval_split))
  starts = np.linspace(0, max(len(text) - length, 0), num).astype(int)
  return [text[s:s + length] for s in starts]


def similarity_metrics(samples: list[str], passages: list[str], embed_fn) -> dict:
  """One draw: the mean 1-5 similarity of each sample to its nearest held-out passage (the
  first half of `passages`)."""
  refs = passages[:len(passages) // 2]
  return {'embedding_similarity': float(np.mean(
      text_metrics.nearest_similarity(refs, samples, embed_fn)))}


def _true_reward(config):
  name = config.rlhf.get('true_reward', '') if config.get('rlhf') else ''
  return gold.TRUE_REWARDS.get(name)


def evaluate_text_run(workdir: str, config, num_samples: int = 0, tag: str | None = None,
                      num_draws: int = 5) -> dict:
  """Held-out and sample metrics of a text run; writes eval.json (eval_<tag>.json)."""
  start = time.perf_counter()
  held = heldout(config, workdir, num_draws)
  step, draws, made_by = sample_sets.load_samples(workdir, config, num_samples,
                                                  ('tokens', 'mask'), tag, num_draws)
  family = configs.family_class(config.family)(sample_sets.with_settings(config, made_by))
  train = corpus.train_text(config.data)
  grams, true_reward = memorization.text_kgrams(train, MIN_OVERLAP), _true_reward(config)
  texts = [family.sample_text(d) for d in draws]
  notes, embed_fn, passages, real = {}, None, [], {}
  try:   # similarity to held-out text needs the optional sentence encoder (the .[embed] extra)
    embed_fn = text_metrics.default_embed_fn()
  except ImportError as e:
    notes['embedding_similarity'] = f'skipped: {e}'
  if embed_fn is not None:
    length = max(1, int(np.mean([len(t) for ts in texts for t in ts])))
    passages = heldout_passages(config, length)
    # The yardstick: held-out passages (the second half) against the same references.
    real = similarity_metrics(passages[len(passages) // 2:], passages, embed_fn)
  per_draw, examples = [], []
  for d, ts in zip(draws, texts):
    tokens = [t[m > 0].tolist() for t, m in zip(np.asarray(d['tokens']), np.asarray(d['mask']))]
    per_draw.append(sample_metrics(ts, tokens, train, true_reward, grams))
    if embed_fn is not None:
      per_draw[-1].update(similarity_metrics(ts, passages, embed_fn))
    examples = examples or ts[:3]
  result = {'step': step, 'samples': made_by, 'num_samples': len(draws[0]['tokens']),
            'num_draws': len(draws), 'heldout': held, 'metrics': stats.over_draws(per_draw),
            'draws': per_draw, 'examples': examples, 'feature_space': 'text',
            'reference': {f'heldout_{k}': v for k, v in real.items()},
            'notes': notes, 'wall_time_s': time.perf_counter() - start}
  if jax.process_index() == 0:
    with open(sample_sets.eval_path(workdir, made_by['tag']), 'w') as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result


def format_table(result: dict) -> str:
  lines = [f"samples: {result['samples'].get('file')} ({result['samples'].get('tag')})",
           f"step {result['step']}: {result['num_draws']} draws of {result['num_samples']} "
           'samples; mean ± s.e. over the draws', '', 'held-out (the family\'s eval):']
  for group in (result['heldout'], result['metrics']):
    for k, v in group.items():
      if k.endswith('_se') or k == 'num_draws':
        continue
      lines.append(f"  {k:28s} {stats.format_mean_se(v, group.get(f'{k}_se', float('nan')), 5)}")
    if group is result['heldout']:
      lines += ['samples:']
  for k, v in result.get('reference', {}).items():
    lines.append(f'  {k:28s} {v:.5g}   (real held-out text: the yardstick)')
  for k, v in result.get('notes', {}).items():
    lines.append(f'note: {k}: {v}')
  return '\n'.join(lines)
