"""True reward against KL for every checkpoint of policy runs (SFT, PPO, DPO): the RLHF
frontier plot.

Every policy is measured the same way, whatever trained it: replies to the first
`--num_prompts` held-out prompts (the 'test' split of `shakespeare_prompts`: plays never
trained on) sampled at `--temperature` for `--response_len` tokens from one fixed key; the
hidden true reward of the decoded replies (--true_reward: research/rlhf/sentiment.py or gold.py);
the KL to the reference policy, sum over reply tokens of log pi - log pi_ref under the sampling
distributions (temperature-scaled, as PPO optimises it), averaged over replies; and, with
`--reward`, the reward model's score.

  python -m research.rlhf.evaluate --reference=workdirs/rlhf/sft \
      --runs=workdirs/rlhf/sft,workdirs/rlhf/ppo,workdirs/rlhf/dpo \
      --reward=workdirs/rlhf/rm --out=workdirs/rlhf/frontier

writes frontier.jsonl (one line per checkpoint) and frontier.png (true reward vs KL).
"""
from __future__ import annotations

import dataclasses

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from research import checkpoint as ckpt_lib
from research.data import corpus
from research.data import datasets
from research.data import tokenizers
from research.lm import family as lm_family
from research.lm import generate as gen
from research.lm import model as model_lib
from research.rlhf import best_of_n, gold, heads


def run_config(workdir: str) -> ml_collections.ConfigDict:
  cfg = lm_family.source_config(workdir)
  if cfg is None:
    raise FileNotFoundError(f'{workdir}: no saved config (config.json); is it a finished run?')
  return ml_collections.ConfigDict(cfg)


def checkpoint_steps(workdir: str) -> list[int]:
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  steps = sorted(ckpt.manager.all_steps())
  ckpt.close()
  return steps


def load_params(workdir: str, step: int | None = None, heads_too: bool = False) -> dict:
  """A run's parameters at `step` (None = latest), EMA copy when it kept one; the LM tree only
  (RLHF heads dropped) unless `heads_too`."""
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  params = ckpt.model_params(step)
  ckpt.close()
  if not heads_too:
    params = {k: v for k, v in params.items() if k not in (heads.VALUE, heads.REWARD)}
  return jax.tree.map(jnp.asarray, params)


def prompt_batch(data_cfg, num: int, seq_len: int):
  """The first `num` held-out prompts, left-padded [num, seq_len], and their mask."""
  cfg = ml_collections.ConfigDict(data_cfg.to_dict())
  cfg.name, cfg.seq_len = 'shakespeare_prompts', seq_len
  cfg.records, cfg.preference_source = '', 'synthetic'
  if 'max_pairs' in cfg:
    cfg.max_pairs = 0
  rows = datasets.reader(cfg, 'test').rows(np.arange(num))[0]
  tokens = jnp.asarray(rows)
  return tokens, tokens != tokenizers.PAD


@functools.partial(jax.jit, static_argnums=(0,))
def _kl_and_logp(net, params, ref_params, prompts, pmask, tokens, mask, temperature):
  p = prompts.shape[1]
  out = []
  for prm in (params, ref_params):
    logits, _, _ = heads.forward(net.apply, prm, prompts, pmask, tokens, mask)
    out.append(heads.continuation_logprobs(logits, tokens, mask, p, temperature)[0])
  return jnp.sum(out[0] - out[1], axis=1)


@functools.partial(jax.jit, static_argnums=(0,))
def _rm_score(net, params, prompts, pmask, tokens, mask):
  return heads.reward_score(net.apply, params, prompts, pmask, tokens, mask)


def _network(run: str, tok, max_len: int, heads_too: bool = False):
  """(the Transformer of `run`'s config, dropout off and room for `max_len` tokens, its latest
  parameters)."""
  model_cfg = lm_family.model_config(run_config(run), tok.vocab_size)
  model_cfg = dataclasses.replace(model_cfg, dropout=0.0, attn_dropout=0.0,
                                  max_len=max(model_cfg.max_len, max_len))
  return model_lib.Transformer(model_cfg), load_params(run, heads_too=heads_too)


def best_of_n_curve(reference: str, reward: str, *, n_max: int = 64, num_prompts: int = 128,
                    response_len: int = 48, temperature: float = 0.7, prompt_len: int = 64,
                    seed: int = 0, true_reward: str = 'gold', batch_size: int = 128
                    ) -> list[dict]:
  """Best-of-n of the reference policy by the proxy reward model `reward`, for n = 1, 2, 4, ...
  <= n_max: n_max replies per held-out prompt, each scored by the proxy and the true reward;
  per n the expected true and proxy score of the proxy's pick (`best_of_n.expected_best`, mean
  and s.e. over prompts) at KL = log n - (n - 1)/n."""
  ref_cfg = run_config(reference)
  tok = corpus.tokenizer(ref_cfg.data)
  net, params = _network(reference, tok, prompt_len + response_len)
  rm = _network(reward, tok, prompt_len + response_len, heads_too=True)
  prompts, pmask = prompt_batch(ref_cfg.data, num_prompts, prompt_len)
  prompts, pmask = jnp.repeat(prompts, n_max, axis=0), jnp.repeat(pmask, n_max, axis=0)
  key = jax.random.key(seed)
  proxy, texts = [], []
  for i in range(0, len(prompts), batch_size):
    pr, pm = prompts[i:i + batch_size], pmask[i:i + batch_size]
    out = gen.generate(net.apply, {'params': params}, pr, pm, jax.random.fold_in(key, i),
                       max_new_tokens=response_len, temperature=temperature,
                       eos_id=tokenizers.EOS, pad_id=tokenizers.PAD, cfg=net.cfg)
    proxy.append(np.asarray(_rm_score(rm[0], rm[1], pr, pm, out['tokens'], out['mask'])))
    t, m = np.asarray(out['tokens']), np.asarray(out['mask'])
    texts += [tok.decode(row[r > 0].tolist()) for row, r in zip(t, m)]
  proxy = np.concatenate(proxy).reshape(num_prompts, n_max)
  true = np.asarray(gold.TRUE_REWARDS[true_reward](texts), np.float64).reshape(num_prompts, n_max)
  rows, n = [], 1
  while n <= n_max:
    g, p = best_of_n.expected_best(true, proxy, n), best_of_n.expected_best(proxy, proxy, n)
    rows.append({'n': n, 'kl': best_of_n.kl(n), 'true_reward': float(g.mean()),
                 'true_reward_se': float(g.std() / np.sqrt(len(g))),
                 'rm_score': float(p.mean()), 'family': 'best_of_n', 'run': reward,
                 'reference': reference, 'samples_per_prompt': n_max})
    n *= 2
  return rows


def evaluate_policy(net, params, ref_params, tok, prompts, pmask, key, *, response_len: int,
                    temperature: float, batch_size: int = 128, reward=None,
                    true_reward: str = 'sentiment') -> dict:
  """Mean true reward (`true_reward`, a name in gold.TRUE_REWARDS), KL to the reference (nats
  per reply), reply length, RM score."""
  true, kls, lengths, scores, texts = [], [], [], [], []
  for i in range(0, len(prompts), batch_size):
    pr, pm = prompts[i:i + batch_size], pmask[i:i + batch_size]
    out = gen.generate(net.apply, {'params': params}, pr, pm, jax.random.fold_in(key, i),
                       max_new_tokens=response_len, temperature=temperature,
                       eos_id=tokenizers.EOS, pad_id=tokenizers.PAD, cfg=net.cfg)
    tokens, mask = out['tokens'], out['mask']
    kls.append(np.asarray(_kl_and_logp(net, params, ref_params, pr, pm, tokens, mask,
                                       jnp.float32(temperature))))
    if reward is not None:
      scores.append(np.asarray(_rm_score(reward[0], reward[1], pr, pm, tokens, mask)))
    t, m = np.asarray(tokens), np.asarray(mask)
    texts += [tok.decode(row[r > 0].tolist()) for row, r in zip(t, m)]
    lengths.append(m.sum(1))
  true = gold.TRUE_REWARDS[true_reward](texts)
  result = {'true_reward': float(np.mean(true)),
            'true_reward_se': float(np.std(true) / np.sqrt(len(true))),
            'kl': float(np.mean(np.concatenate(kls))),
            'response_length': float(np.mean(np.concatenate(lengths))),
            'examples': texts[:3], 'texts': texts}
  if scores:
    result['rm_score'] = float(np.mean(np.concatenate(scores)))
  return result


def frontier(reference: str, runs: list[str], *, reward: str = '', num_prompts: int = 256,
             response_len: int = 48, temperature: float = 0.7, prompt_len: int = 64,
             seed: int = 0, out: str = '', true_reward: str = 'sentiment') -> list[dict]:
  """Evaluates every checkpoint of `runs` against the reference run; returns one dict each and
  writes frontier.jsonl / frontier.png under `out`."""
  ref_cfg = run_config(reference)
  tok = corpus.tokenizer(ref_cfg.data)
  ref_params = load_params(reference)
  prompts, pmask = prompt_batch(ref_cfg.data, num_prompts, prompt_len)
  key = jax.random.key(seed)
  rm = _network(reward, tok, prompt_len + response_len, heads_too=True) if reward else None
  rows = []
  for run in runs:
    cfg = run_config(run)
    net = _network(run, tok, prompt_len + response_len)[0]
    for step in checkpoint_steps(run):
      params = load_params(run, step)
      r = evaluate_policy(net, params, ref_params, tok, prompts, pmask, key,
                          response_len=response_len, temperature=temperature, reward=rm,
                          true_reward=true_reward)
      r.update(run=run, family=cfg.family, step=step)
      print(json.dumps({k: v for k, v in r.items() if k not in ('examples', 'texts')}),
            flush=True)
      rows.append(r)
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'frontier.jsonl'), 'w') as f:
      for r in rows:
        f.write(json.dumps({k: v for k, v in r.items() if k != 'texts'}) + '\n')
    plot(rows, os.path.join(out, 'frontier.png'))
  return rows


def plot(rows: list[dict], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for run in dict.fromkeys(r['run'] for r in rows):
    pts = sorted((r for r in rows if r['run'] == run), key=lambda r: r['step'])
    label = f"{pts[0]['family']} ({os.path.basename(run.rstrip('/'))})"
    ax.errorbar([r['kl'] for r in pts], [r['true_reward'] for r in pts],
                yerr=[r['true_reward_se'] for r in pts], marker='o', capsize=2, label=label)
    for r in pts:  # the checkpoint's step next to its point
      ax.annotate(str(r['step']), (r['kl'], r['true_reward']), fontsize=7,
                  textcoords='offset points', xytext=(4, -8))
  ax.set_xlabel('KL(policy || SFT reference), nats per reply')
  ax.set_ylabel('true reward (held-out prompts)')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  f = flags.FLAGS
  frontier(f.reference, [r for r in f.runs.split(',') if r], reward=f.reward,
           num_prompts=f.num_prompts, response_len=f.response_len, temperature=f.temperature,
           prompt_len=f.prompt_len, seed=f.seed, out=f.out, true_reward=f.true_reward)
  if f.best_of:
    if not f.reward:
      raise app.UsageError('--best_of needs --reward (the proxy that picks the best reply)')
    rows = best_of_n_curve(f.reference, f.reward, n_max=f.best_of, num_prompts=f.num_prompts,
                           response_len=f.response_len, temperature=f.temperature,
                           prompt_len=f.prompt_len, seed=f.seed, true_reward=f.true_reward)
    for r in rows:
      print(json.dumps(r), flush=True)
    if f.out:
      with open(os.path.join(f.out, 'best_of_n.jsonl'), 'w') as fh:
        fh.writelines(json.dumps(r) + '\n' for r in rows)


def _define_flags():
  flags.DEFINE_string('reference', None, 'The reference policy run (the SFT run).')
  flags.DEFINE_string('runs', '', 'Comma-separated policy runs; every checkpoint is evaluated.')
  flags.DEFINE_string('reward', '', 'Optional reward_model run: also report its score.')
  flags.DEFINE_integer('num_prompts', 256, 'Held-out prompts.')
  flags.DEFINE_integer('response_len', 48, 'Tokens per reply.')
  flags.DEFINE_float('temperature', 0.7, 'Sampling temperature (the KL is under it too).')
  flags.DEFINE_integer('prompt_len', 64, 'Prompt tokens (left-padded).')
  flags.DEFINE_integer('seed', 0, 'Sampling key.')
  flags.DEFINE_string('out', '', 'Directory for frontier.jsonl and frontier.png.')
  flags.DEFINE_enum('true_reward', 'sentiment', sorted(gold.TRUE_REWARDS),
                    'The hidden reward the replies are scored by.')
  flags.DEFINE_integer('best_of', 0, 'Also best-of-n of the reference by --reward, n = 1, 2, 4, '
                       '... up to this (0 = off); writes best_of_n.jsonl under --out.')
  flags.mark_flag_as_required('reference')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
