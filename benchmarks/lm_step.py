"""LM train step and KV-cache generation, ours (research.lm, JAX) against HuggingFace GPT-2
(GPT2LMHeadModel on PyTorch CPU), same sizes, same data and prompts, measured in one process.

  .venv/bin/python benchmarks/lm_step.py [--layers 4] [--d_model 128] [--heads 4] [--vocab 0]
      [--seq_len 128] [--batch 32] [--warmup 3] [--rounds 3] [--steps 10]
      [--gen_batch 8] [--prompt_len 16] [--new_tokens 128] [--gen_rounds 3]
      [--matmul_size 2048] [--torch_threads 0] [--devices 1] [--json OUT]

--devices N runs ours data-parallel over N host CPU devices (train step and generation, the
batch and the prompts split between them): one XLA CPU program keeps about one core busy here,
so `--devices 2` is how ours uses a 2-core machine, as PyTorch's 2 threads do.

Needs the optional peer libraries (`bench` extra, installed with a constraint pinning
torch==2.13.0; see benchmarks/README.md). The peer model is built from a GPT2Config (random
init, nothing downloaded).

Ours is timed through the harness path, what `research.main` runs: the config of
experiments/lm_shakespeare_char/config.py overridden to the sizes (dropout 0), built by
`research.trainer.build` on a one-device mesh (the LM family's `train_step` under
`parallel.data_parallel`, state donated, AdamW with the config's lr, b2, weight decay, gradient
clipping and warmup-cosine schedule). The peer is `model(input_ids, labels=..., shift_labels=...)`,
`loss.backward()`, `clip_grad_norm_`, `torch.optim.AdamW.step()`, `zero_grad()` with the same
hyperparameters (constant lr). Both see the same token batch [batch, seq_len + 1]: inputs are
its first seq_len columns and the targets the next tokens, seq_len targets per row in both.

Train rounds interleave the two implementations so both see the same machine load; each
round's step time is a median over --steps steps, and the reported numbers are medians over
rounds (ratio peer / ours per round). Generation: `research.lm.generate.generate` (jitted,
explicit KV cache, lax.scan) against `model.generate(..., do_sample=True, use_cache=True)`
under `torch.inference_mode`, the same left-padded prompts, temperature 1, no top-k / top-p,
exactly --new_tokens tokens per row (no EOS in either), timed after compilation, medians over
--gen_rounds interleaved calls.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from research import configs, parallel, trainer  # noqa: E402
from research.lm import generate as gen  # noqa: E402
from research.lm import model as model_lib  # noqa: E402
from train_step import load_config, matmul_peak, set_gpt2_like_model  # noqa: E402  (benchmarks/train_step.py)

CONFIG = 'experiments/lm_shakespeare_char/config.py'


def our_config(args):
  c = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               CONFIG))
  set_gpt2_like_model(c, args.layers, args.heads, args.d_model)
  c.model.max_len = max(args.seq_len, args.prompt_len + args.new_tokens)
  c.data.seq_len = args.seq_len
  c.train.batch_size = args.batch
  c.model.matmul_impl = args.matmul_impl
  c.sample.max_new_tokens = min(c.sample.max_new_tokens, c.model.max_len - 1)
  configs.validate(c, args.devices)
  return c


class Ours:
  def __init__(self, args, tokens: np.ndarray):
    config = our_config(args)
    self.config = config
    self.exp = trainer.build(config, parallel.make_mesh(jax.devices()[:args.devices]))
    family = self.exp.family
    self.tokenizer_vocab = family.model_cfg.vocab_size
    if args.vocab and args.vocab != family.model_cfg.vocab_size:
      # The char tokenizer fixes the vocabulary; swap in a network of the requested size (the
      # family's closures read family.net / model_cfg at trace time, so this is still the
      # harness's train step).
      family.model_cfg = dataclasses.replace(family.model_cfg, vocab_size=args.vocab)
      family.net = model_lib.Transformer(family.model_cfg)
    self.model_cfg = family.model_cfg
    self.batch = parallel.host_batch_to_global({'tokens': tokens}, self.exp.mesh)
    self.state = self.exp.init(jax.random.key(config.seed), self.batch)
    self.params = model_lib.num_params(self.state.params)
    assert self.params == model_lib.param_count(self.model_cfg), self.params
    self.key = jax.random.key(1)
    t = time.perf_counter()
    self.step()
    self.first_step_s = time.perf_counter() - t

  def step(self):
    self.state, self.metrics = self.exp.train_step(self.state, self.batch, self.key)
    jax.block_until_ready((self.state, self.metrics))

  def loss(self) -> float:
    return float(parallel.to_host(self.metrics)['loss'])

  # --- generation -------------------------------------------------------------------------
  def setup_generate(self, prompts: np.ndarray, mask: np.ndarray, new_tokens: int, pad_id: int):
    net = self.exp.family.net
    apply = lambda params, tokens, **kw: net.apply({'params': params}, tokens, **kw)
    params = self.exp.family.eval_params_of(self.state)
    mesh = self.exp.mesh

    # Each device generates for its slice of the prompts (one device: the plain call).
    def per_device(params, prompts, mask, key):
      return gen.generate(
          apply, params, prompts, mask, parallel.device_key(key), max_new_tokens=new_tokens,
          temperature=1.0, top_k=0, top_p=1.0, eos_id=None, pad_id=pad_id, cfg=self.model_cfg)

    fn = parallel.data_parallel(per_device, mesh, batch_args=(1, 2), out_batched=True)
    prompts, mask = parallel.host_batch_to_global((prompts, mask), mesh)
    self._gen = lambda key: fn(params, prompts, mask, key)
    self.gen_calls = 0
    t = time.perf_counter()
    out = self.generate()
    self.gen_first_s = time.perf_counter() - t
    return out

  def generate(self):
    out = self._gen(jax.random.key(100 + self.gen_calls))
    jax.block_until_ready(out)
    self.gen_calls += 1
    return out


class Peer:
  def __init__(self, args, vocab: int, max_len: int, pad_id: int, opt_cfg, tokens: np.ndarray):
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    from transformers import GPT2Config, GPT2LMHeadModel  # pylint: disable=g-import-not-at-top
    transformers.logging.set_verbosity_error()
    self.torch, self.transformers = torch, transformers
    if args.torch_threads:
      torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    self.hf_config = GPT2Config(
        vocab_size=vocab, n_positions=max_len, n_embd=args.d_model, n_layer=args.layers,
        n_head=args.heads, n_inner=None, activation_function='gelu_new',
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        bos_token_id=None, eos_token_id=None, pad_token_id=pad_id, loss_type='ForCausalLM')
    self.model = GPT2LMHeadModel(self.hf_config)
    self.model.train()
    self.attn_implementation = self.model.config._attn_implementation  # pylint: disable=protected-access
    self.params = sum(p.numel() for p in self.model.parameters())   # tied wte counted once
    # AdamW as ours: weight decay on >= 2-D parameters only (ours skips 1-D norm scales; here
    # biases and LayerNorm scales / offsets), gradient clipping by global norm.
    decay = [p for p in self.model.parameters() if p.dim() >= 2]
    no_decay = [p for p in self.model.parameters() if p.dim() < 2]
    self.opt = torch.optim.AdamW(
        [{'params': decay, 'weight_decay': float(opt_cfg.weight_decay)},
         {'params': no_decay, 'weight_decay': 0.0}],
        lr=float(opt_cfg.lr), betas=(float(opt_cfg.b1), float(opt_cfg.b2)),
        eps=float(opt_cfg.eps))
    self.clip = float(opt_cfg.clip_grad_norm)
    t = torch.from_numpy(tokens.astype(np.int64))
    self.inputs = t[:, :-1].contiguous()
    self.targets = t[:, 1:].contiguous()
    t0 = time.perf_counter()
    self.step()
    self.first_step_s = time.perf_counter() - t0

  def step(self):
    torch = self.torch
    out = self.model(input_ids=self.inputs, labels=self.inputs, shift_labels=self.targets)
    out.loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    self.last_loss = out.loss.detach()

  def loss(self) -> float:
    return float(self.last_loss)

  # --- generation -------------------------------------------------------------------------
  def setup_generate(self, prompts: np.ndarray, mask: np.ndarray, new_tokens: int, pad_id: int):
    torch = self.torch
    self.model.eval()
    self._kw = dict(input_ids=torch.from_numpy(prompts.astype(np.int64)),
                    attention_mask=torch.from_numpy(mask.astype(np.int64)),
                    do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                    pad_token_id=pad_id)
    self.gen_calls = 0
    t = time.perf_counter()
    out = self.generate()
    self.gen_first_s = time.perf_counter() - t
    return out

  def generate(self):
    torch = self.torch
    torch.manual_seed(100 + self.gen_calls)
    with torch.inference_mode():
      out = self.model.generate(**self._kw)
    self.gen_calls += 1
    return out

  def matmul_peak(self, n: int, trials: int = 7) -> dict:
    """torch's f32 n x n matmul rate (median of `trials`), for context next to JAX's."""
    torch = self.torch
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.matmul(a, b)
    t0 = time.perf_counter()
    torch.matmul(a, b)
    one = time.perf_counter() - t0
    reps = max(1, min(100, int(0.2 / max(one, 1e-6))))
    times = []
    for _ in range(trials):
      t0 = time.perf_counter()
      for _ in range(reps):
        torch.matmul(a, b)
      times.append((time.perf_counter() - t0) / reps)
    sec = statistics.median(times)
    return {'matmul_size': n, 'matmul_sec': sec, 'matmul_flops_per_sec': 2.0 * n ** 3 / sec}


def median_step(impl, steps: int) -> float:
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    impl.step()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def timed(fn):
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def make_prompts(n: int, length: int, vocab: int, pad_id: int, seed: int = 1):
  """n left-padded prompts of 1..length real tokens (the first full length, the rest drawn from
  [length / 2, length]), ids from [3, vocab) (past the char tokenizer's pad/bos/eos)."""
  rng = np.random.default_rng(seed)
  lo = min(3, vocab - 1)
  lists = [rng.integers(lo, vocab, length if i == 0 else
                        int(rng.integers(max(1, length // 2), length + 1))).tolist()
           for i in range(n)]
  tokens, mask = gen.pad_prompts(lists, pad_id)
  return np.asarray(tokens), np.asarray(mask)


def table(rows: list[tuple[str, str, str, str]]) -> str:
  head = ('', 'ours (JAX)', 'GPT-2 (torch)', 'torch/ours')
  widths = [max(len(r[i]) for r in [head] + rows) for i in range(4)]
  line = lambda cells: '| ' + ' | '.join(c.ljust(w) if i == 0 else c.rjust(w)
                                         for i, (c, w) in enumerate(zip(cells, widths))) + ' |'
  return '\n'.join([line(head), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
                   + [line(r) for r in rows])


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--layers', type=int, default=4)
  p.add_argument('--d_model', type=int, default=128)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--vocab', type=int, default=0,
                 help="vocabulary size; 0 = the Shakespeare char tokenizer's (87)")
  p.add_argument('--seq_len', type=int, default=128, help='training sequence length')
  p.add_argument('--batch', type=int, default=32, help='training batch')
  p.add_argument('--warmup', type=int, default=3, help='untimed train steps after the first')
  p.add_argument('--rounds', type=int, default=3, help='interleaved train rounds')
  p.add_argument('--steps', type=int, default=10, help='timed train steps per round and model')
  p.add_argument('--gen_batch', type=int, default=8, help='prompts per generate call')
  p.add_argument('--prompt_len', type=int, default=16, help='longest prompt (left-padded to it)')
  p.add_argument('--new_tokens', type=int, default=128, help='generated tokens per prompt')
  p.add_argument('--gen_rounds', type=int, default=3, help='timed generate calls per model')
  p.add_argument('--matmul_size', type=int, default=2048, help='n of the reference matmul')
  p.add_argument('--torch_threads', type=int, default=0, help="0 = torch's default")
  p.add_argument('--devices', type=int, default=1,
                 help='host CPU devices ours runs data-parallel over (train and generate)')
  p.add_argument('--matmul_impl', default='auto',
                 help="our dense layers (research/matmul.py): auto | xla | cpu ('xla' = before "
                      "the CPU weight-gradient layout)")
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  if args.devices > 1:
    jax.config.update('jax_num_cpu_devices', args.devices)   # before any JAX operation

  load_start = os.getloadavg()
  peak = matmul_peak(args.matmul_size)
  # Vocabulary and pad id: the char tokenizer's (cached on disk; the family loads the same one)
  # unless --vocab. One random token batch, shared by both models.
  from research.data import corpus  # pylint: disable=g-import-not-at-top
  tok = corpus.tokenizer(our_config(args).data)
  vocab = args.vocab or tok.vocab_size
  pad_id = tok.pad_id if tok.pad_id < vocab else 0
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab, (args.batch, args.seq_len + 1)).astype(np.int32)
  ours = Ours(args, tokens)
  peer = Peer(args, vocab, ours.model_cfg.max_len, pad_id, ours.config.optimizer, tokens)
  torch = peer.torch
  torch_peak = peer.matmul_peak(args.matmul_size)
  dev = jax.devices()[0]
  print(f'device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}, '
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs), '
        f'jax {jax.__version__}, torch {torch.__version__} (threads: {torch.get_num_threads()} '
        f'intra-op, {torch.get_num_interop_threads()} interop), transformers {peer.transformers.__version__}'
        f' (attn {peer.attn_implementation})')
  if load_start[0] > 0.5 * (os.cpu_count() or 1):
    print(f'WARNING: load average {load_start[0]:.1f} on {os.cpu_count()} CPUs before the run: '
          'PyTorch (OpenMP) slows down far more than XLA under contention; do not quote these '
          'numbers', file=sys.stderr)
  print(f'f32 {args.matmul_size}^3 matmul: JAX {peak["matmul_flops_per_sec"] / 1e9:.1f} GFLOP/s, '
        f'torch {torch_peak["matmul_flops_per_sec"] / 1e9:.1f} GFLOP/s')
  print(f'model: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, vocab {vocab}, '
        f'seq {args.seq_len}, batch {args.batch}, max_len {ours.model_cfg.max_len}; params: ours '
        f'{ours.params:,}, GPT-2 {peer.params:,}')

  for _ in range(args.warmup):
    ours.step()
    peer.step()
  rounds = []
  for r in range(args.rounds):
    o, q = median_step(ours, args.steps), median_step(peer, args.steps)
    rounds.append({'round': r, 'ours_s': o, 'peer_s': q, 'ratio': q / o})
    print(f'train round {r}: ours {o * 1e3:.1f} ms, GPT-2 {q * 1e3:.1f} ms, '
          f'GPT-2/ours {q / o:.2f}x', flush=True)
  train = {k: statistics.median(r[k] for r in rounds) for k in ('ours_s', 'peer_s', 'ratio')}
  tokens_per_step = args.batch * args.seq_len
  flops_step = model_lib.flops_per_token(ours.model_cfg, args.seq_len) * tokens_per_step
  train.update({
      'tokens_per_step': tokens_per_step, 'model_flops_per_step': flops_step,
      'ours_tokens_per_s': tokens_per_step / train['ours_s'],
      'peer_tokens_per_s': tokens_per_step / train['peer_s'],
      'ours_flops_per_s': flops_step / train['ours_s'],
      'peer_flops_per_s': flops_step / train['peer_s'],
      'ours_first_step_s': ours.first_step_s, 'peer_first_step_s': peer.first_step_s,
      'ours_loss': ours.loss(), 'peer_loss': peer.loss()})
  train['ours_fraction_of_matmul_peak'] = train['ours_flops_per_s'] / peak['matmul_flops_per_sec']
  train['peer_fraction_of_matmul_peak'] = train['peer_flops_per_s'] / peak['matmul_flops_per_sec']
  train['peer_fraction_of_torch_matmul'] = (train['peer_flops_per_s']
                                            / torch_peak['matmul_flops_per_sec'])
  # The goal (ours 2x faster than GPT-2) as a FLOP rate: twice the peer's, as a fraction
  # of the matmul peak. Above 1 the goal asks for more than the machine's matmul rate.
  train['goal_2x_fraction_of_matmul_peak'] = 2 * train['peer_fraction_of_matmul_peak']

  # --- generation -------------------------------------------------------------------------
  prompts, pmask = make_prompts(args.gen_batch, args.prompt_len, vocab, pad_id)
  o_out = ours.setup_generate(prompts, pmask, args.new_tokens, pad_id)
  q_out = peer.setup_generate(prompts, pmask, args.new_tokens, pad_id)
  assert o_out['tokens'].shape == (args.gen_batch, args.new_tokens), o_out['tokens'].shape
  assert float(o_out['mask'].sum()) == args.gen_batch * args.new_tokens, 'ours stopped early'
  assert tuple(q_out.shape) == (args.gen_batch, args.prompt_len + args.new_tokens), q_out.shape
  grounds = []
  for r in range(args.gen_rounds):
    o, _ = timed(ours.generate)
    q, _ = timed(peer.generate)
    grounds.append({'round': r, 'ours_s': o, 'peer_s': q, 'ratio': q / o})
  generation = {k: statistics.median(r[k] for r in grounds) for k in ('ours_s', 'peer_s', 'ratio')}
  new = args.gen_batch * args.new_tokens
  generation.update({
      'batch': args.gen_batch, 'prompt_len': args.prompt_len,
      'prompt_lengths': pmask.sum(1).tolist(), 'new_tokens': args.new_tokens,
      'generated_tokens': new, 'ours_tokens_per_s': new / generation['ours_s'],
      'peer_tokens_per_s': new / generation['peer_s'],
      'ours_first_call_s': ours.gen_first_s, 'peer_first_call_s': peer.gen_first_s,
      'rounds': grounds})

  pct = lambda x: f'{100 * x:.1f}'
  print(table([
      ('params', f'{ours.params:,}', f'{peer.params:,}', ''),
      ('first train step s', f"{train['ours_first_step_s']:.2f}",
       f"{train['peer_first_step_s']:.2f}", ''),
      ('train ms/step', f"{train['ours_s'] * 1e3:.1f}", f"{train['peer_s'] * 1e3:.1f}",
       f"{train['ratio']:.2f}x"),
      ('train tokens/s', f"{train['ours_tokens_per_s']:,.0f}",
       f"{train['peer_tokens_per_s']:,.0f}", ''),
      ('model GFLOP/s', f"{train['ours_flops_per_s'] / 1e9:.2f}",
       f"{train['peer_flops_per_s'] / 1e9:.2f}", ''),
      ('% JAX matmul peak', pct(train['ours_fraction_of_matmul_peak']),
       pct(train['peer_fraction_of_matmul_peak']), ''),
      ('first generate s', f"{generation['ours_first_call_s']:.2f}",
       f"{generation['peer_first_call_s']:.2f}", ''),
      ('generate s', f"{generation['ours_s']:.3f}", f"{generation['peer_s']:.3f}",
       f"{generation['ratio']:.2f}x"),
      ('generated tokens/s', f"{generation['ours_tokens_per_s']:,.0f}",
       f"{generation['peer_tokens_per_s']:,.0f}", ''),
  ]))
  print(f"model FLOPs = research.lm.model.flops_per_token x {tokens_per_step} tokens = "
        f"{flops_step / 1e9:.2f} GFLOP/step for both; generation: {args.gen_batch} prompts "
        f"({min(generation['prompt_lengths'])}-{args.prompt_len} tokens, left-padded) x "
        f"{args.new_tokens} new tokens; ratio = GPT-2 time / our time (>1: ours faster)")
  print(f"bound: a train step 2x faster than GPT-2's needs "
        f"{pct(train['goal_2x_fraction_of_matmul_peak'])}% of the JAX matmul peak (ours now "
        f"{pct(train['ours_fraction_of_matmul_peak'])}%)")

  result = {
      'args': vars(args), 'config': CONFIG, 'our_path': 'research.trainer.build train_step',
      'vocab': vocab, 'tokenizer_vocab': ours.tokenizer_vocab, 'pad_id': pad_id,
      'max_len': ours.model_cfg.max_len, 'params_ours': ours.params, 'params_peer': peer.params,
      'jax': jax.__version__, 'jax_backend': jax.default_backend(),
      'jax_device': dev.device_kind, 'jax_device_count': jax.device_count(),
      'torch': torch.__version__, 'transformers': peer.transformers.__version__,
      'torch_num_threads': torch.get_num_threads(),
      'torch_num_interop_threads': torch.get_num_interop_threads(),
      'peer_attn_implementation': peer.attn_implementation, 'cpu_count': os.cpu_count(),
      'loadavg_start': load_start, 'loadavg_end': os.getloadavg(),
      'matmul': peak, 'torch_matmul': torch_peak,
      'train': {**train, 'rounds': rounds}, 'generation': generation}
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
