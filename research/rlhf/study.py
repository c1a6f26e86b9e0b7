r"""The reward-model overoptimization study (Gao, Schulman & Hilton 2023) at CPU scale, in one
resumable command:

  python -m research.rlhf.study --workdir=workdirs/overopt --results=results/rlhf/overoptimization

Stages, each skipped when its output exists (a rerun resumes; training runs resume from their
checkpoints through research.launch):
  1. lm, sft       the character-level Shakespeare LM and its dialogue fine-tune (the reference
                   policy), as in docs/rlhf.md;
  2. pairs         reply pairs of the reference on train / test prompts, labelled by Bradley-Terry
                   labelers on the dense gold reward (research/rlhf/gold.py);
  3. rm            proxy reward models on the first N train pairs, N in --sizes, per seed, of
                   two model sizes (--rm_models): 'base' starts from the SFT policy, 'small'
                   from a smaller LM pretrained on the same text (lm_small);
  4. ppo, dpo      PPO against each base-size proxy, PPO against the gold reward itself (the control
                   arm), and DPO on the largest pair set, per seed; checkpoints every
                   --eval_every iterations;
  5. eval          every checkpoint's gold score, its proxy's score and KL to the reference on
                   held-out prompts (research.rlhf.evaluate), and best-of-n by each proxy;
  6. report        gold score gained over the reference against sqrt(KL) per arm (mean ± s.e.
                   over seeds), Gao et al.'s fits (research/rlhf/overoptimization.py), a figure
                   and a Markdown table under --results.

`--scale=tiny` shrinks every model and budget to a minutes-long smoke run (the tests use it);
`--scale=cpu` is the documented study (about 10 core-hours with the default sizes and seeds,
estimated from its runs' measured times); `--scale=short` halves the training budgets for a
session-long run with --sizes=1000,4000.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

import numpy as np
from absl import app, flags

from research import configs, launch
from research.evaluation import stats
from research.rlhf import evaluate as rl_eval
from research.rlhf import overoptimization, preferences

EXPERIMENTS = 'experiments'


@dataclasses.dataclass(frozen=True)
class Scale:
  """Budgets and shapes of one study size."""
  lm_steps: int
  sft_steps: int
  rm_steps: int
  ppo_steps: int
  dpo_steps: int
  eval_every: int        # PPO / DPO checkpoints evaluated
  test_pairs: int        # held-out pairs (reward models' accuracy)
  eval_prompts: int      # held-out prompts per checkpoint / best-of-n
  best_of: int           # best-of-n up to this n
  response_len: int
  model: tuple           # config overrides shared by every run (one architecture)
  small_model: tuple     # the small proxies' architecture (over `model`)


SCALES = {
    'cpu': Scale(lm_steps=1200, sft_steps=300, rm_steps=1000, ppo_steps=200, dpo_steps=400,
                 eval_every=25, test_pairs=500, eval_prompts=256, best_of=64, response_len=48,
                 model=(), small_model=('--config.model.num_layers=2', '--config.model.d_model=64',
                                        '--config.model.num_heads=2')),
    # About 3.5 core-hours (with --sizes=1000,4000 and 3 seeds): a session's afternoon on 2 cores.
    'short': Scale(lm_steps=1200, sft_steps=300, rm_steps=500, ppo_steps=100, dpo_steps=200,
                   eval_every=25, test_pairs=500, eval_prompts=128, best_of=32, response_len=48,
                   model=(), small_model=('--config.model.num_layers=2',
                                          '--config.model.d_model=64',
                                          '--config.model.num_heads=2')),
    'tiny': Scale(lm_steps=4, sft_steps=4, rm_steps=4, ppo_steps=2, dpo_steps=2, eval_every=1,
                  test_pairs=8, eval_prompts=4, best_of=4, response_len=4,
                  model=('--config.model.num_layers=1', '--config.model.d_model=32',
                         '--config.model.num_heads=2', '--config.train.batch_size=8',
                         '--config.eval.batch_size=8', '--config.data.num_eval_examples=8',
                         '--config.eval.num_samples=0', '--config.train.log_every=1',
                         '--config.optimizer.schedule.warmup_steps=1'),
                  small_model=('--config.model.d_model=16',)),
}


def _config(name: str) -> str:
  return f'--config={os.path.join(launch.ROOT, EXPERIMENTS, name, "config.py")}'


def _job(key, workdir: str, experiment: str, steps: int, scale: Scale, *extra: str) -> launch.Job:
  every = [f'--config.train.checkpoint_every={scale.eval_every}',
           f'--config.train.eval_every={max(scale.eval_every, steps)}',
           f'--config.train.sample_every={max(scale.eval_every, steps) * 10}',
           '--config.train.keep_checkpoints=1000'] if experiment.startswith(('ppo', 'dpo')) else []
  return launch.Job(key, workdir, (_config(experiment), f'--config.train.num_steps={steps}',
                                   *scale.model, *every, *extra), steps)


def _train(jobs: Sequence[launch.Job], parallel: int) -> None:
  todo = [j for j in jobs if not launch.finished(j.workdir, j.num_steps)]
  if not todo:
    return
  results = launch.run(todo, parallel=parallel, label='study')
  bad = {k: r for k, r in results.items() if r['status'] != 'done'}
  if bad:
    raise RuntimeError(f'study: runs not finished, rerun to resume: {bad}')


def _pairs(w: str, sizes: Sequence[int], scale: Scale, seed: int) -> str:
  store = os.path.join(w, 'pairs.sqlite')
  for split, num in (('train', max(sizes)), ('test', scale.test_pairs)):
    marker = os.path.join(w, f'pairs_{split}.json')
    if os.path.exists(marker):
      continue
    summary = preferences.run(os.path.join(w, 'sft'), store, split, num, seed=seed,
                              max_new_tokens=scale.response_len, true_reward='gold')
    with open(marker, 'w') as f:
      json.dump({k: v for k, v in summary.items() if k != 'ids'}, f)
  return store


def _rows(path: str, compute) -> list[dict]:
  if os.path.exists(path):
    with open(path) as f:
      return [json.loads(line) for line in f]
  rows = compute()
  with open(path + '.tmp', 'w') as f:
    f.writelines(json.dumps({k: v for k, v in r.items() if k != 'texts'}) + '\n' for r in rows)
  os.replace(path + '.tmp', path)
  return rows


def run(workdir: str, results: str, seeds: Sequence[int], sizes: Sequence[int],
        scale_name: str = 'cpu', parallel: int = 1,
        rm_models: Sequence[str] = ('base', 'small')) -> dict:
  """Every stage of the module docstring; returns the report."""
  scale, w = SCALES[scale_name], os.path.abspath(workdir)
  os.makedirs(w, exist_ok=True)
  lm, sft = os.path.join(w, 'lm'), os.path.join(w, 'sft')
  _train([_job('lm', lm, 'lm_shakespeare_char', scale.lm_steps, scale)], parallel)
  _train([_job('sft', sft, 'sft_shakespeare_dialogue', scale.sft_steps, scale,
               f'--config.init_from.workdir={lm}')], parallel)
  store = _pairs(w, sizes, scale, seeds[0])
  starts = {'base': (sft, ())}
  if 'small' in rm_models:
    lm_small = os.path.join(w, 'lm_small')
    _train([_job('lm_small', lm_small, 'lm_shakespeare_char', scale.lm_steps, scale,
                 *scale.small_model)], parallel)
    starts['small'] = (lm_small, scale.small_model)
  rms = {(n, m, s): os.path.join(w, 'rm', f'n{n}' + ('' if m == 'base' else f'_{m}'), f'seed_{s}')
         for n in sizes for m in rm_models for s in seeds}
  _train([_job(('rm', n, m, s), d, 'rm_shakespeare_sentiment', scale.rm_steps, scale,
               *starts[m][1], f'--config.seed={s}', f'--config.data.records={store}',
               f'--config.data.max_pairs={n}', f'--config.init_from.workdir={starts[m][0]}')
          for (n, m, s), d in rms.items()], parallel)
  arms = {}   # (arm, seed) -> (workdir, the proxy whose score is reported)
  for s in seeds:
    top = rms[(max(sizes), rm_models[0], s)]   # the proxy whose score the other arms report
    for n in sizes:
      arms[(f'ppo_rm{n}', s)] = (os.path.join(w, 'ppo', f'rm{n}', f'seed_{s}'),
                                 rms[(n, rm_models[0], s)])
    arms[('ppo_gold', s)] = (os.path.join(w, 'ppo', 'gold', f'seed_{s}'), top)
    arms[('dpo', s)] = (os.path.join(w, 'dpo', f'seed_{s}'), top)
  common = (f'--config.init_from.workdir={sft}', '--config.rlhf.true_reward=gold',
            f'--config.rlhf.response_len={scale.response_len}')
  jobs = []
  for (arm, s), (d, proxy) in arms.items():
    if arm == 'dpo':
      jobs.append(_job((arm, s), d, 'dpo_shakespeare_sentiment', scale.dpo_steps, scale,
                       f'--config.seed={s}', f'--config.data.records={store}',
                       f'--config.init_from.workdir={sft}',
                       f'--config.sample.max_new_tokens={scale.response_len}'))
    else:
      reward = (('--config.rlhf.reward=true', "--config.rlhf.reward_workdir=''")
                if arm == 'ppo_gold' else
                ('--config.rlhf.reward=model', f'--config.rlhf.reward_workdir={proxy}'))
      jobs.append(_job((arm, s), d, 'ppo_shakespeare_sentiment', scale.ppo_steps, scale,
                       f'--config.seed={s}', *common, *reward,
                       f'--config.sample.max_new_tokens={scale.response_len}'))
  _train(jobs, parallel)
  ev = os.path.join(w, 'eval')
  os.makedirs(ev, exist_ok=True)
  opts = dict(num_prompts=scale.eval_prompts, response_len=scale.response_len, true_reward='gold')
  # The reference's gold score on the same prompts and key: every RL arm's gain is over it.
  reference = _rows(os.path.join(ev, 'reference.jsonl'),
                    lambda: rl_eval.frontier(sft, [sft], **opts))
  base = max(reference, key=lambda r: r['step'])['true_reward']
  curves = {}
  for (arm, s), (d, proxy) in arms.items():
    rows = _rows(os.path.join(ev, f'{arm}_seed{s}.jsonl'),
                 lambda d=d, proxy=proxy: rl_eval.frontier(sft, [d], reward=proxy, **opts))
    curves.setdefault(arm, []).append([{**r, 'base': base} for r in rows])
  for (n, m, s), d in rms.items():
    name = f'bon_rm{n}' + ('' if m == 'base' else f'_{m}')
    rows = _rows(os.path.join(ev, f'{name}_seed{s}.jsonl'),
                 lambda d=d, s=s: rl_eval.best_of_n_curve(sft, d, n_max=scale.best_of, seed=s,
                                                          **opts))
    curves.setdefault(name, []).append(rows)
  return report(curves, results)


def _points(runs: list[list[dict]]) -> list[dict]:
  """Per x-position (checkpoint step, or n for best-of-n): KL and gold gain over the reference
  (an RL row's 'base'; best-of-n: its n = 1 row, the reference itself), mean ± s.e. over
  seeds."""
  per = {}
  for rows in runs:
    for r in rows:
      base = r['base'] if 'base' in r else next(b for b in rows if b['n'] == 1)['true_reward']
      x = r.get('n', r.get('step'))
      per.setdefault(x, []).append((r['kl'], r['true_reward'] - base,
                                    r.get('rm_score', np.nan)))
  out = []
  for x in sorted(per):
    kl, gain, proxy = (np.array(v, np.float64) for v in zip(*per[x]))
    mean, se, n = stats.mean_se(gain.tolist())
    out.append({'x': x, 'n_seeds': n, 'kl': float(kl.mean()), 'gain': mean,
                'gain_se': 0.0 if n == 1 else se, 'proxy': float(np.nanmean(proxy))})
  return out


def report(curves: dict, results: str) -> dict:
  """Points, fits and a figure per arm; writes study.json, study.md and study.png."""
  rep = {}
  for arm, runs in sorted(curves.items()):
    pts = _points(runs)
    form = 'bon' if arm.startswith('bon') else 'rl'
    fit = (overoptimization.fit([p['kl'] for p in pts], [p['gain'] for p in pts], form)
           if len(pts) >= 2 else None)
    peak = overoptimization.peak(fit, form) if fit else None
    rep[arm] = {'form': form, 'points': pts, 'fit': fit,   # peak None: no maximum (beta <= 0)
                'peak': peak if peak and np.isfinite(peak[0]) else None}
  if results:
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, 'study.json'), 'w') as f:
      json.dump(rep, f, indent=1, allow_nan=False)
    with open(os.path.join(results, 'study.md'), 'w') as f:
      f.write(markdown(rep))
    plot(rep, os.path.join(results, 'study.png'))
  return rep


def markdown(rep: dict) -> str:
  lines = ['| arm | form | points | seeds | max gold gain (KL) | alpha | beta | fitted peak KL |',
           '|---|---|---|---|---|---|---|---|']
  for arm, r in rep.items():
    best = max(r['points'], key=lambda p: p['gain'], default=None)
    fit = r['fit'] or {}
    lines.append(
        f"| {arm} | {r['form']} | {len(r['points'])} | "
        f"{max((p['n_seeds'] for p in r['points']), default=0)} | "
        + (f"{best['gain']:.3f} ± {best['gain_se']:.3f} ({best['kl']:.2f})" if best else '-')
        + f" | {fit.get('alpha', float('nan')):.3f} | {fit.get('beta', float('nan')):.3f} | "
        + (f"{r['peak'][0]:.2f} |" if r['peak'] else '- |'))
  return '\n'.join(lines) + '\n'


def plot(rep: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top  (the viz extra)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, r in rep.items():
    d = np.sqrt([p['kl'] for p in r['points']])
    line = ax.errorbar(d, [p['gain'] for p in r['points']],
                       yerr=[p['gain_se'] for p in r['points']], marker='o', ms=3, capsize=2,
                       ls='none' if r['fit'] else '-', label=arm)
    if r['fit'] and len(d):
      grid = np.linspace(0, d.max(), 50)
      ax.plot(grid, overoptimization.predict(grid**2, r['fit'], r['form']),
              color=line[0].get_color(), lw=1)
  ax.set_xlabel('sqrt(KL to the reference), nats^0.5')
  ax.set_ylabel('gold score gained over the reference')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _define_flags():
  flags.DEFINE_string('workdir', None, 'Where every run of the study lives (resumable).')
  flags.DEFINE_string('results', '', 'Where study.json / study.md / study.png go.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the reward models and policies.')
  flags.DEFINE_list('sizes', ['1000', '4000', '16000'], 'Train pairs of each proxy.')
  flags.DEFINE_enum('scale', 'cpu', sorted(SCALES), 'Budgets and shapes (tiny: a smoke run).')
  flags.DEFINE_list('rm_models', ['base', 'small'], "Proxy model sizes: base (from the SFT "
                    "policy), small (from a smaller pretrained LM); PPO uses the first.")
  flags.DEFINE_integer('parallel', 1, 'Training runs at a time.', lower_bound=1)


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    seeds, sizes = [int(s) for s in f.seeds], [int(n) for n in f.sizes]
  except ValueError:
    configs.fail('flag error: --seeds / --sizes must be comma-separated integers')
  try:
    if not f.rm_models or set(f.rm_models) - {'base', 'small'}:
      configs.fail(f'flag error: --rm_models={",".join(f.rm_models)}: use base and/or small')
    rep = run(f.workdir, f.results, seeds, sizes, f.scale, f.parallel, f.rm_models)
  except RuntimeError as e:   # a run failed or was stopped: its line says which; rerun resumes
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(markdown(rep))


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=lambda argv: configs.parse_command_flags(argv, required=('workdir',)))
