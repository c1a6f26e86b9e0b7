"""The sharded path (research/sharding.py): on a (batch x model) mesh of 2 devices the LM and
U-Net steps equal the data-parallel step; FSDP halves the per-device state; checkpoints move
between mesh shapes; 2 processes x 2 devices on a 2x2 mesh match one process."""
import json
import os

import chex
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from research import checkpoint, configs, parallel, sharding, trainer
from research.data import pipeline
from tests import helpers, test_diffusion, test_lm

MESHES = {'1x2': 2, '2x1': 1}   # name -> parallel.model_axis on 2 devices


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('lm_data'))


def _lm(data_dir, mode='data', model_axis=1):
  c = test_lm.tiny(data_dir)
  c.optimizer.grad_accum_steps = 2
  c.optimizer.ema_decay = 0.9          # the EMA copy is sharded like the params
  c.parallel.update(mode=mode, model_axis=model_axis, fsdp_min_size=16)
  configs.validate(c, 2)
  return c


def _steps(config, batch, n=2):
  """(state after `n` steps, host params and metrics) on `config`'s own mesh."""
  exp = trainer.build(config)
  state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, exp.mesh))
  for i in range(n):
    state, metrics = exp.train_step(state, parallel.host_batch_to_global(batch, exp.mesh),
                                    jax.random.key(i))
  return state, parallel.to_host((state.params, state.ema_params, metrics))


def _spec(x):
  return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))


def test_lm_sharded_step_equals_data_parallel_step(data_dir):
  assert jax.device_count() == 2
  c = _lm(data_dir)
  batch = next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed))
  _, want = _steps(c, batch)
  for name, model_axis in MESHES.items():
    state, got = _steps(_lm(data_dir, 'sharded', model_axis), batch)
    chex.assert_trees_all_close(want, got, atol=1e-5, rtol=1e-5)
    assert dict(state.params['block_0']['attn']['qkv']['kernel'].sharding.mesh.shape) == {
        'batch': 2 // model_axis, 'model': model_axis}
    qkv = state.params['block_0']['attn']['qkv']['kernel']       # [d, 3d]
    down = state.params['block_0']['mlp']['down']['kernel']      # [hidden, d]
    if model_axis == 2:   # Megatron: column-split qkv, row-split down; nothing left for FSDP
      assert _spec(qkv) == (None, 'model') and _spec(down) == ('model', None)
    else:                 # FSDP: each leaf split over the batch axis, its moments alike
      assert 'batch' in _spec(qkv) and 'batch' in _spec(down)
      mu = [x for p, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
            if 'mu' in jax.tree_util.keystr(p) and 'qkv' in jax.tree_util.keystr(p)]
      assert mu and _spec(mu[0]) == _spec(qkv)
      assert _spec(state.ema_params['block_0']['attn']['qkv']['kernel']) == _spec(qkv)
  assert np.isfinite(want[2]['loss'])


def test_fsdp_halves_the_state_per_device(data_dir):
  c = _lm(data_dir)
  c.model.update(d_model=64, num_layers=2)
  batch = next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed))
  sizes = {}
  for mode in ('data', 'sharded'):
    c.parallel.mode = mode
    exp = trainer.build(c)
    state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, exp.mesh))
    sizes[mode] = sharding.bytes_per_device((state.params, state.opt_state, state.ema_params))
  assert 0.45 < sizes['sharded'] / sizes['data'] < 0.6, sizes


@pytest.mark.parametrize('mesh', ['1x2', pytest.param('2x1', marks=pytest.mark.slow)])
def test_unet_sharded_step_equals_data_parallel_step(mesh):
  c = test_diffusion.tiny('ddpm', False)
  c.optimizer.name, c.optimizer.lr = 'sgd', 0.1   # see test_diffusion: Adam's sign flips
  c.parallel.fsdp_min_size = 16
  batch = next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed))
  _, want = _steps(c, batch, n=1)
  c.parallel.update(mode='sharded', model_axis=MESHES[mesh])
  configs.validate(c, 2)
  state, got = _steps(c, batch, n=1)
  chex.assert_trees_all_close(want, got, atol=2e-5, rtol=2e-5)
  conv1 = state.params['net']['mid_res0']['conv1']['kernel']
  assert _spec(conv1)[3] == 'model'                # the rule (a size-1 axis on 2x1) ...
  assert ('batch' in _spec(conv1)) == (mesh == '2x1')   # ... and FSDP on a free dimension


def test_checkpoints_move_between_meshes(tmp_path, data_dir):
  """Data-parallel run to step 3, resumed sharded (1x2) to step 6, then restored on 2x1 and
  on the data-parallel mesh: every one equals an uninterrupted data-parallel run."""
  c = _lm(data_dir)
  full = trainer.train(c, str(tmp_path / 'full'))
  run = str(tmp_path / 'moved')
  half = c.copy_and_resolve_references()
  half.train.num_steps = half.train.checkpoint_every = 3
  trainer.train(half, run)
  resumed = trainer.train(_lm(data_dir, 'sharded', 2), run)
  assert resumed['train']['loss'] == pytest.approx(full['train']['loss'], rel=1e-5)
  want = checkpoint.Checkpointer(str(tmp_path / 'full' / 'checkpoints'),
                                 read_only=True).restore_params(6)['params']
  for config in (_lm(data_dir, 'sharded', 1), c):
    _, state, _, _ = trainer.restore(config, run)
    assert int(parallel.to_host(state.step)) == 6
    chex.assert_trees_all_close(parallel.to_host(state.params), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('override,field', [
    ({'family': 'gan'}, 'parallel.mode'),
    ({'parallel.model_axis': 3}, 'parallel.model_axis'),
    ({'parallel.rules': 'mlp/up/kernel$=_,tensor'}, 'parallel.rules'),
    ({'parallel.rules': 'no spec here'}, 'parallel.rules'),
])
def test_config_errors_name_the_field(override, field):
  if 'family' in override:
    c = configs.defaults('gan')
  else:
    c = helpers.tiny_digits()
  c.parallel.mode = 'sharded'
  for k, v in override.items():
    if k != 'family':
      section, name = k.split('.')
      c[section][name] = v
  with pytest.raises(configs.ConfigError, match=field.replace('.', r'\.')):
    configs.validate(c, 2)


def test_data_mode_rejects_sharded_fields():
  c = helpers.tiny_digits()
  c.parallel.model_axis = 2
  with pytest.raises(configs.ConfigError, match="parallel.mode='sharded'"):
    configs.validate(c, 2)


def test_rule_that_does_not_fit_names_the_leaf():
  mesh = sharding.make_mesh(2)
  rules = sharding.parse_rules('kernel$=model,_')
  with pytest.raises(configs.ConfigError, match='dense/kernel'):
    sharding.leaf_spec('params/dense/kernel', (3, 4), rules, mesh, True, 0)
  with pytest.raises(configs.ConfigError, match='2 dimensions'):
    sharding.leaf_spec('params/dense/kernel', (4, 4, 4), rules, mesh, True, 0)
  assert sharding.leaf_spec('params/dense/kernel', (4, 6), rules, mesh, True, 0) == P('model', None)
  # FSDP on the largest free dimension that divides; small leaves stay replicated.
  mesh = sharding.make_mesh(1)
  assert sharding.leaf_spec('p/w', (3, 8, 4), [], mesh, True, 0) == P(None, 'batch', None)
  assert sharding.leaf_spec('p/b', (8,), [], mesh, True, 16) == P(None)


def test_two_processes_on_a_2x2_mesh_match_one_process(tmp_path, data_dir):
  """2 processes x 2 devices, sharded on a (batch 2 x model 2) mesh (tensor parallel within a
  host, FSDP across hosts), against 1 process x 2 devices data-parallel."""
  args = ['--config=experiments/lm_shakespeare_char/config.py', f'--config.data.data_dir={data_dir}',
          '--config.data.seq_len=32', '--config.model.num_layers=2', '--config.model.num_heads=2',
          '--config.model.d_model=32', '--config.model.dropout=0.0',
          '--config.train.batch_size=8', '--config.train.num_steps=4', '--config.train.log_every=1',
          '--config.train.eval_every=4', '--config.train.sample_every=4',
          '--config.train.checkpoint_every=4', '--config.data.num_eval_examples=40',
          '--config.eval.batch_size=16', '--config.eval.num_samples=2',
          '--config.sample.max_new_tokens=8', '--config.parallel.fsdp_min_size=16',
          '--config.optimizer.schedule.warmup_steps=2',
          '--cpu_devices=2']
  single = str(tmp_path / 'single')
  helpers.cli([*args, f'--workdir={single}'], timeout=300)
  multi = str(tmp_path / 'multi')
  outs = helpers.cli_processes([*args, f'--workdir={multi}', '--config.parallel.mode=sharded',
                                '--config.parallel.model_axis=2'])
  assert "4 devices (mesh {'batch': 2, 'model': 2})" in outs[0], outs[0][-3000:]

  def losses(workdir):
    lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
    return ([l['loss'] for l in lines if l['split'] == 'train'],
            [l for l in lines if l['split'] == 'eval'][-1])
  (l1, e1), (l2, e2) = losses(single), losses(multi)
  assert len(l1) == len(l2) == 4
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  assert e1['bits_per_token'] == pytest.approx(e2['bits_per_token'], rel=1e-5)
  assert e1['num_examples'] == e2['num_examples']
  p1 = checkpoint.Checkpointer(os.path.join(single, 'checkpoints'), read_only=True)
  p2 = checkpoint.Checkpointer(os.path.join(multi, 'checkpoints'), read_only=True)
  chex.assert_trees_all_close(p1.restore_params(4)['params'], p2.restore_params(4)['params'],
                              atol=1e-5, rtol=1e-5)
  # The 2-process sharded checkpoint resumes in 1 process, data parallel (the data order
  # restarts: positions are saved per host).
  out = helpers.cli([*args, f'--workdir={multi}', '--config.train.num_steps=6'], timeout=300)
  assert 'resumed from step 4' in out.stderr and 'data order restarts' in out.stderr
  assert len(losses(multi)[0]) == 6
