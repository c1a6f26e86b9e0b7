"""Mixed precision (`config.precision`): float32 against bf16 training of the same experiment, from
the same seed, on the same batches and keys; loss curves, their gap, and the speed ratio.

  .venv/bin/python benchmarks/mixed_precision.py [--lm_steps 200] [--diffusion_steps 200]
      [--window 20] [--json results/precision/summary.json]

Experiments (each the config file's `get_config()`, then `--*_overrides` applied; the schedule
is the config's own, so N steps are the first N of the real run):
  lm         experiments/lm_shakespeare_char (char GPT, batch 32), by default shrunk to width 64
             and context 64 (`--lm_overrides`; '' runs the file's 0.8M-parameter model)
  diffusion  experiments/diffusion_digits (DDPM U-Net on 8x8 digits, batch 64), as in the file
Variants (`--variants`, compute/moments): float32/float32 (the reference), bfloat16/float32 and
bfloat16/bfloat16 (bf16 compute and bf16 Adam mu; the setting `--config.precision.compute=bfloat16
--config.precision.moments=bfloat16` gives).

All variants of an experiment are built in one process on one device, initialised from the
config's seed (the same float32 parameters: init does not depend on the compute dtype) and
stepped in lockstep: each step's batch (from the experiment's own train pipeline) and key go to
every variant, so the curves differ by precision only, and load changes on a shared machine hit
every variant alike. Per variant it reports the loss curve as means over windows of `--window`
steps, the largest relative gap |bf16 - f32| / f32 between window means after the first window
(the tolerance), the last window's mean loss, and the median step time over the steps after
`--warmup` (each step blocked on its results; the first step's compile excluded). The speed
ratio is f32 median / bf16 median (> 1: bf16 is faster).

XLA on CPU has no native bf16 matmul (it converts around float32 kernels), so on CPU bf16 is
usually slower; the ratio is printed as measured. The point of a CPU run is the curves; run it on
an accelerator for the speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from research import configs, parallel, trainer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = {
    'lm': 'experiments/lm_shakespeare_char/config.py',
    'diffusion': 'experiments/diffusion_digits/config.py',
}
DEFAULT_VARIANTS = 'float32/float32,bfloat16/float32,bfloat16/bfloat16'


def load_config(path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location('mp_cfg_' + os.path.basename(os.path.dirname(path)),
                                                os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def _set(config, overrides: str) -> None:
  """'a.b=1,c.d=x' -> config.a.b = 1 (typed as the existing field), ..."""
  for item in [s.strip() for s in overrides.split(',') if s.strip()]:
    key, value = item.split('=', 1)
    *path, leaf = key.split('.')
    node = config
    for p in path:
      node = node[p]
    old = node[leaf]
    node[leaf] = (value.lower() == 'true' if isinstance(old, bool) else type(old)(value))


def windows(values, width: int) -> list[float]:
  """Means over consecutive windows of `width` steps (a last partial window is dropped)."""
  n = len(values) // width
  return [float(np.mean(values[i * width:(i + 1) * width])) for i in range(n)]


def run_experiment(name: str, steps: int, variants: list[tuple[str, str]], window: int,
                   warmup: int, overrides: str) -> dict:
  from research.data import pipeline   # imported late: a config error should not need it

  mesh = parallel.make_mesh(jax.devices()[:1])
  exps = {}
  for compute, moments in variants:
    c = load_config(EXPERIMENTS[name])
    _set(c, overrides)
    c.train.num_steps = max(c.train.num_steps, steps)  # the schedule as in the real run
    c.precision.compute, c.precision.moments = compute, moments
    configs.validate(c, 1)
    exps[f'{compute}/{moments}'] = (c, trainer.build(c, mesh))
  config = next(iter(exps.values()))[0]
  data = pipeline.train_iterator(config.data, config.train.batch_size, config.seed)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  first = parallel.host_batch_to_global(next(data), mesh)
  states = {k: exp.init(init_key, first) for k, (_, exp) in exps.items()}
  losses = {k: [] for k in exps}
  times = {k: [] for k in exps}
  t_start = time.perf_counter()
  batch = first
  for step in range(steps):
    if step:
      batch = parallel.host_batch_to_global(next(data), mesh)
    for k, (_, exp) in exps.items():
      t = time.perf_counter()
      states[k], metrics = exp.train_step(states[k], batch, train_key)
      loss = float(jax.device_get(metrics['loss']))   # blocks on the step
      times[k].append(time.perf_counter() - t)
      losses[k].append(loss)
    if (step + 1) % max(steps // 5, 1) == 0:
      print(f'  {name} step {step + 1}/{steps}: ' + ', '.join(
          f'{k} {np.mean(v[-window:]):.4f}' for k, v in losses.items()), flush=True)
  wall = time.perf_counter() - t_start

  ref_key = 'float32/float32'
  out = {'config': EXPERIMENTS[name], 'overrides': overrides, 'steps': steps, 'window': window,
         'batch_size': int(config.train.batch_size), 'wall_sec': wall, 'variants': {}}
  ref = windows(losses[ref_key], window) if ref_key in losses else None
  for k in exps:
    curve = windows(losses[k], window)
    timed = times[k][1 + warmup:] or times[k][1:]
    r = {'window_means': curve, 'final_loss': curve[-1] if curve else float('nan'),
         'all_finite': bool(np.all(np.isfinite(losses[k]))),
         'median_step_sec': statistics.median(timed), 'first_step_sec': times[k][0]}
    if ref is not None and k != ref_key:
      gaps = [abs(a - b) / abs(b) for a, b in zip(curve[1:], ref[1:])]
      r['max_rel_gap_after_first_window'] = max(gaps) if gaps else float('nan')
      r['final_rel_gap'] = abs(curve[-1] - ref[-1]) / abs(ref[-1]) if curve else float('nan')
      r['speed_ratio_f32_over_this'] = (statistics.median(times[ref_key][1 + warmup:]
                                                          or times[ref_key][1:])
                                        / r['median_step_sec'])
    out['variants'][k] = r
  return out


def report(name: str, r: dict) -> str:
  lines = [f'== {name}: {r["config"]} {r["overrides"]} ({r["steps"]} steps, batch '
           f'{r["batch_size"]}, windows of {r["window"]} steps, {r["wall_sec"]:.0f} s)']
  keys = list(r['variants'])
  n = len(r['variants'][keys[0]]['window_means'])
  lines.append('  window end | ' + ' | '.join(f'{k:>17}' for k in keys))
  for i in range(n):
    lines.append(f'  {(i + 1) * r["window"]:>10} | ' + ' | '.join(
        f'{r["variants"][k]["window_means"][i]:>17.4f}' for k in keys))
  for k in keys:
    v = r['variants'][k]
    extra = ''
    if 'max_rel_gap_after_first_window' in v:
      extra = (f', max rel gap after window 1 {100 * v["max_rel_gap_after_first_window"]:.2f}%'
               f', final gap {100 * v["final_rel_gap"]:.2f}%'
               f', speed f32/this {v["speed_ratio_f32_over_this"]:.2f}x')
    lines.append(f'  {k}: final {v["final_loss"]:.4f}, median step '
                 f'{1000 * v["median_step_sec"]:.1f} ms{extra}')
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--lm_steps', type=int, default=200)
  p.add_argument('--diffusion_steps', type=int, default=200)
  p.add_argument('--lm_overrides',
                 default='model.d_model=64,data.seq_len=64,sample.max_new_tokens=32',
                 help="comma-separated field=value for the LM config ('' = as in the file); the "
                      'default shrinks it ~8x to run in about a minute per variant on 2 CPU cores')
  p.add_argument('--diffusion_overrides', default='')
  p.add_argument('--variants', default=DEFAULT_VARIANTS,
                 help='comma-separated compute/moments pairs; float32/float32 is the reference')
  p.add_argument('--window', type=int, default=20, help='steps per smoothing window')
  p.add_argument('--warmup', type=int, default=5, help='steps after the first left out of the '
                                                       'median step time')
  p.add_argument('--json', default='results/precision/summary.json')
  args = p.parse_args(argv)

  variants = [tuple(v.split('/')) for v in args.variants.split(',') if v.strip()]
  dev = jax.devices()[0]
  load0 = os.getloadavg()
  summary = {'device': f'{dev.device_kind} ({jax.default_backend()})',
             'cpu_count': os.cpu_count(), 'jax': jax.__version__,
             'python': platform.python_version(), 'loadavg_start': load0, 'experiments': {}}
  print(f'{summary["device"]}, jax {jax.__version__}, {os.cpu_count()} CPUs, load average '
        f'{load0[0]:.2f}', flush=True)
  for name, steps, overrides in (('lm', args.lm_steps, args.lm_overrides),
                                 ('diffusion', args.diffusion_steps, args.diffusion_overrides)):
    if steps <= 0:
      continue
    r = run_experiment(name, steps, variants, args.window, args.warmup, overrides)
    summary['experiments'][name] = r
    print(report(name, r), flush=True)
  summary['loadavg_end'] = os.getloadavg()
  gaps = [v['max_rel_gap_after_first_window'] for r in summary['experiments'].values()
          for v in r['variants'].values() if 'max_rel_gap_after_first_window' in v]
  if gaps:
    summary['tolerance'] = max(gaps)
    print(f'tolerance: every bf16 variant within {100 * max(gaps):.2f}% of float32 at every '
          f'window after the first (load average at the end {summary["loadavg_end"][0]:.2f})')
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump(summary, f, indent=1)
    print(f'wrote {args.json}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
