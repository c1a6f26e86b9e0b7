"""Per-device memory of the train state and step time: data parallel vs the sharded path.

  python benchmarks/sharding.py [--devices 2] [--steps 10] [--json out.json]

On `--devices` (fake CPU) devices, for a GPT-2-small-shaped LM (124M-class, char vocabulary)
and the ddpm_cifar10 U-Net (Ho et al.'s 35.7M; on 8x8x1 input here), each laid out three ways:
  data   the default: the whole state (params, Adam's moments) replicated on every device;
  fsdp   sharded, mesh (devices x 1): every leaf split over the batch axis (ZeRO-3);
  tp     sharded, mesh (1 x devices): Megatron tensor parallelism, the rest replicated;
it prints the bytes of params + optimizer state one device holds (read from the arrays'
addressable shards, not computed), and their ratio to the data-parallel layout. With --steps,
also the median step time of a small LM (fake CPU devices share the host's cores: a check that
the sharded step runs, not a speed measurement).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--devices', type=int, default=2)
  p.add_argument('--steps', type=int, default=10)
  p.add_argument('--json', default='')
  args = p.parse_args()

  import jax
  jax.config.update('jax_num_cpu_devices', args.devices)
  import numpy as np
  from benchmarks.train_step import load_config, set_gpt2_like_model
  from research import parallel, sharding, trainer

  n = jax.device_count()
  layouts = {'data': ('data', 1), 'fsdp': ('sharded', 1), 'tp': ('sharded', n)}

  def lm(layers=12, heads=12, width=768, batch=2 * n, seq=64):
    c = load_config('experiments/lm_shakespeare_char/config.py')
    set_gpt2_like_model(c, layers, heads, width)
    c.data.seq_len = seq
    c.train.batch_size = batch
    return c, {'tokens': np.zeros((batch, seq + 1), np.int32),
               'loss_mask': np.ones((batch, seq), np.float32)}

  def unet():
    # The CIFAR-10 U-Net's widths and depths on the 8x8 digits (the cifar10 data needs
    # TensorFlow here): attention one level down, as at 16x16 on CIFAR; only the 1-channel
    # input and output convolutions differ.
    c = load_config('experiments/ddpm_cifar10/config.py')
    c.data.name, c.data.source, c.model.attn_resolutions = 'digits', 'package', '4'
    c.train.batch_size = n
    return c, {'image': np.zeros((n, 8, 8, 1), np.float32), 'label': np.zeros((n,), np.int32)}

  def build(config, batch, layout):
    config = config.copy_and_resolve_references()
    config.parallel.mode, config.parallel.model_axis = layouts[layout]
    exp = trainer.build(config)
    state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, exp.mesh))
    return exp, state

  results = {'devices': n, 'memory': {}, 'step_s': {}}
  print(f'{n} CPU devices; bytes of params + optimizer state on one device')
  for name, make in (('lm_gpt2_small_shape', lm), ('unet_ddpm_cifar10', unet)):
    config, batch = make()
    row = {}
    for layout in layouts:
      _, state = build(config, batch, layout)
      row[layout] = sharding.bytes_per_device((state.params, state.opt_state))
      if layout == 'data':
        row['num_params'] = int(sum(np.size(x) for x in jax.tree.leaves(state.params)))
      del state
    results['memory'][name] = row
    print(f'{name} ({row["num_params"] / 1e6:.1f}M params): ' + ', '.join(
        f'{k} {row[k] / 2**20:.1f} MiB ({row[k] / row["data"]:.2f}x)' for k in layouts))

  if args.steps:
    config, batch = lm(layers=4, heads=4, width=256, batch=8 * n, seq=128)
    for layout in layouts:
      exp, state = build(config, batch, layout)
      global_batch = parallel.host_batch_to_global(batch, exp.mesh)
      key = jax.random.key(1)
      state, m = exp.train_step(state, global_batch, key)    # compile
      jax.block_until_ready(m)
      times = []
      for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = exp.train_step(state, global_batch, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
      results['step_s'][layout] = statistics.median(times)
      del state
    base = results['step_s']['data']
    print(f'small LM (4 x 256, batch {8 * n} x 128), median of {args.steps} steps: ' + ', '.join(
        f'{k} {v * 1e3:.0f} ms ({v / base:.2f}x)' for k, v in results['step_s'].items()))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()
