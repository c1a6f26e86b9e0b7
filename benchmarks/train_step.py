"""Train-step throughput of experiment configs, built exactly as the trainer builds them.

  python benchmarks/train_step.py \
      --configs experiments/vae_digits/config.py,experiments/vae_fashion_mnist/config.py \
      [--steps 50] [--warmup 5] [--batch_size 0] [--json results.json]

For each config: parameter count, time to the first step (compile + first run), median steps/s
and examples/s over the timed steps, FLOPs per step from XLA's cost analysis, the FLOP/s that
gives, and that as a fraction of a jitted f32 matmul measured in the same run. See README.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from research import configs, parallel  # noqa: E402


def load_config(spec: str):
  """'path/config.py' or 'path/config.py:arg' -> the file's get_config() (or get_config(arg)),
  the same convention as ml_collections' config_flags."""
  path, _, arg = spec.partition(':')
  name = 'benchmarked_config_' + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  if module_spec is None or not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such config file')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def set_gpt2_like_model(c, layers: int, heads: int, d_model: int) -> None:
  """Our LM's model fields at a GPT-2 peer's shape: GELU MLP of 4 * d_model (n_inner=None), no
  dropout, float32 (lm_step.py, ppo_step.py)."""
  c.model.num_layers = layers
  c.model.num_heads = heads
  c.model.d_model = d_model
  c.model.mlp = 'gelu'
  c.model.mlp_dim = 0
  c.model.dropout = 0.0
  c.model.attn_dropout = 0.0
  c.precision.compute = 'float32'


def flops_of(compiled) -> float:
  """FLOPs of one call of a compiled executable (XLA cost analysis; nan if unavailable).
  jax 0.10 returns a dict; older versions returned a list with one dict per module."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return float('nan')
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return float('nan')
  return float(cost['flops'])


def matmul_peak(n: int, trials: int = 7) -> dict:
  """Median FLOP/s of a jitted f32 [n, n] @ [n, n] on the default device (default precision,
  i.e. what the models' own f32 matmuls get), timing enough back-to-back calls per trial to
  hide dispatch."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  t0 = time.perf_counter()
  mm(a, b).block_until_ready()
  one = time.perf_counter() - t0
  reps = max(1, min(100, int(0.2 / max(one, 1e-6))))
  times = []
  for _ in range(trials):
    t0 = time.perf_counter()
    for _ in range(reps):
      c = mm(a, b)
    c.block_until_ready()
    times.append((time.perf_counter() - t0) / reps)
  sec = statistics.median(times)
  return {'matmul_size': n, 'matmul_sec': sec, 'matmul_flops_per_sec': 2.0 * n ** 3 / sec}


def benchmark(spec: str, steps: int, warmup: int, batch_size: int, mesh) -> dict:
  from research.data import pipeline   # imported late: a config error should not need it

  config = load_config(spec)
  if batch_size:
    config.train.batch_size = batch_size
  configs.validate(config, mesh.size, jax.process_count())
  family = configs.family_class(config.family)(config)
  global_batch = config.train.batch_size

  # Distinct batches, on device before timing, so the numbers are the step's and not the
  # input pipeline's (the batch is not donated, so they can be reused).
  data = pipeline.train_iterator(config.data, global_batch, config.seed,
                                 jax.process_index(), jax.process_count())
  batches = [parallel.host_batch_to_global(next(data), mesh) for _ in range(min(steps, 4))]

  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  init = parallel.data_parallel(family.init_state, mesh, batch_args=(1,), out_batched=False)
  state = init(init_key, batches[0])
  params = state.params if hasattr(state, 'params') else family.eval_params_of(state)
  num_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))

  def step_fn(state, batch, key):   # as research/trainer.py: a fresh key at every step
    return family.train_step(state, batch, jax.random.fold_in(key, state.step))

  train_step = parallel.data_parallel(step_fn, mesh, batch_args=(1,), out_batched=(False, False),
                                      donate_argnums=(0,))

  t0 = time.perf_counter()
  compiled = train_step.lower(state, batches[0], train_key).compile()
  compile_sec = time.perf_counter() - t0
  state, metrics = compiled(state, batches[0], train_key)
  jax.block_until_ready((state, metrics))
  first_step_sec = time.perf_counter() - t0
  flops = flops_of(compiled)   # of one device's program

  for i in range(warmup):
    state, metrics = compiled(state, batches[(i + 1) % len(batches)], train_key)
  jax.block_until_ready((state, metrics))
  times = []
  for i in range(steps):
    batch = batches[i % len(batches)]
    t = time.perf_counter()
    state, metrics = compiled(state, batch, train_key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
  median = statistics.median(times)
  loss = float(parallel.to_host(metrics).get('loss', float('nan')))
  return {
      'config': spec, 'family': config.family, 'data': config.data.name,
      'devices': mesh.size, 'batch_size': global_batch, 'params': num_params,
      'compile_sec': compile_sec, 'first_step_sec': first_step_sec,
      'timed_steps': steps, 'median_step_sec': median, 'steps_per_sec': 1.0 / median,
      'examples_per_sec': global_batch / median,
      'flops_per_step_per_device': flops,
      'flops_per_sec_per_device': flops / median,
      'grad_accum_steps': int(config.optimizer.grad_accum_steps),
      'final_loss': loss, 'finite_loss': bool(np.isfinite(loss)),
  }


def table(results: list[dict], peak: dict) -> str:
  cols = [('config', '{}'), ('params', '{:,}'), ('batch', '{}'), ('first step s', '{:.2f}'),
          ('steps/s', '{:.1f}'), ('examples/s', '{:,.0f}'), ('GFLOP/step', '{:.4g}'),
          ('GFLOP/s', '{:.2f}'), ('% matmul peak', '{:.1f}')]
  rows = []
  for r in results:
    if 'error' in r:
      rows.append([r['config'], f"error: {r['error']}"] + [''] * (len(cols) - 2))
      continue
    vals = [r['config'], r['params'], r['batch_size'], r['first_step_sec'], r['steps_per_sec'],
            r['examples_per_sec'], r['flops_per_step_per_device'] / 1e9,
            r['flops_per_sec_per_device'] / 1e9,
            100 * r['flops_per_sec_per_device'] / peak['matmul_flops_per_sec']]
    rows.append([fmt.format(v) for (_, fmt), v in zip(cols, vals)])
  widths = [max(len(c), *(len(row[i]) for row in rows)) for i, (c, _) in enumerate(cols)]
  line = lambda cells: '| ' + ' | '.join(c.ljust(w) if i == 0 else c.rjust(w)
                                         for i, (c, w) in enumerate(zip(cells, widths))) + ' |'
  out = [line([c for c, _ in cols]), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
  return '\n'.join(out + [line(row) for row in rows])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--configs', required=True,
                 help='comma-separated config files (path.py or path.py:arg)')
  p.add_argument('--steps', type=int, default=50, help='timed steps per config')
  p.add_argument('--warmup', type=int, default=5, help='untimed steps after the first')
  p.add_argument('--batch_size', type=int, default=0, help='global batch; 0 = the config\'s')
  p.add_argument('--matmul_size', type=int, default=2048, help='n of the n^3 peak matmul')
  p.add_argument('--json', default='', help='also write the results to this JSON file')
  args = p.parse_args(argv)

  mesh = parallel.make_mesh()
  dev = jax.devices()[0]
  peak = matmul_peak(args.matmul_size)
  header = (f'{len(jax.devices())} x {dev.device_kind} ({jax.default_backend()}), '
            f'jax {jax.__version__}, python {platform.python_version()}; '
            f'f32 {args.matmul_size}^3 matmul: {peak["matmul_flops_per_sec"] / 1e9:.1f} GFLOP/s '
            f'per device')
  results = []
  for spec in [s.strip() for s in args.configs.split(',') if s.strip()]:
    try:
      r = benchmark(spec, args.steps, args.warmup, args.batch_size, mesh)
      r['fraction_of_matmul_peak'] = r['flops_per_sec_per_device'] / peak['matmul_flops_per_sec']
    except configs.ConfigError as e:
      r = {'config': spec, 'error': str(e)}
    results.append(r)
    if r.get('grad_accum_steps', 1) > 1:
      print(f'note: {spec}: grad_accum_steps > 1; XLA counts a scan body once, so FLOPs are '
            'undercounted', file=sys.stderr)
  print(header)
  print(table(results, peak))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'device': dev.device_kind, 'backend': jax.default_backend(),
                 'num_devices': len(jax.devices()), 'jax': jax.__version__, **peak,
                 'results': results}, f, indent=2)
  return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
  sys.exit(main())
