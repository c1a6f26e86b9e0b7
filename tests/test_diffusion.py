"""The diffusion family: parameterizations, likelihood bounds against closed forms, the
data-parallel step, and a short end-to-end run of each process."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from research import configs, parallel, trainer
from research.data import pipeline
from research.diffusion import likelihood, losses, parameterization as param, schedules
from tests import helpers


def tiny(process='ddpm', toy=False, **diffusion):
  """The diffusion_digits U-Net cut down, or (toy=True) the ring8 MLP: XLA's CPU compile of a
  U-Net step takes ~30 s here, so only a few tests build one."""
  c = helpers.load_config('diffusion_toy2d' if toy else 'diffusion_digits')
  if toy:
    c.model.hidden, c.model.depth = 32, 2
  else:
    c.model.channels = 8
  c.diffusion.process = process
  for k, v in diffusion.items():
    c.diffusion[k] = v
  c.train.batch_size = 16
  c.train.num_steps = 4
  c.optimizer.schedule.name = 'constant'   # lr > 0 from the first step
  c.optimizer.schedule.warmup_steps = 0
  c.train.log_every = 2
  c.train.eval_every = c.train.sample_every = c.train.checkpoint_every = 4
  c.eval.num_samples = 4
  c.sampler.steps = 5
  return c


# --- parameterization -----------------------------------------------------------------------

@pytest.mark.parametrize('target', param.TARGETS)
def test_targets_round_trip_and_weights(target):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x0 = jax.random.normal(k1, (6, 5))
  eps = jax.random.normal(k2, (6, 5))
  logsnr = jnp.linspace(-8, 8, 6)
  alpha, sigma = schedules.vp_alpha_sigma(logsnr)
  z = alpha[:, None] * x0 + sigma[:, None] * eps
  tgt = param.vp_target(target, x0, eps, logsnr)
  np.testing.assert_allclose(param.vp_x0(target, tgt, z, logsnr), x0, atol=2e-4)
  # A perturbed prediction: target-space error = x0_weight * x0-space error.
  pred = tgt + 0.01 * jax.random.normal(k3, tgt.shape)
  err_t = jnp.sum((pred - tgt) ** 2, -1)
  err_x0 = jnp.sum((param.vp_x0(target, pred, z, logsnr) - x0) ** 2, -1)
  np.testing.assert_allclose(err_t, param.x0_weight(target, logsnr) * err_x0, rtol=1e-3)


def test_vp_denoiser_sees_the_vp_latent():
  """D(x, sigma) on VE input x = x0 + sigma eps gives back x0 when the net outputs the true
  eps of z = x / sqrt(1 + sigma^2)."""
  x0 = jnp.array([[0.3, -0.7]])
  eps = jnp.array([[1.2, 0.4]])
  sigma = 2.5

  def oracle_eps(z, c):
    s = jnp.exp(4 * c)[:, None]              # c_noise = ln(sigma) / 4
    return (z * jnp.sqrt(1 + s ** 2) - x0) / s

  d = param.vp_denoiser(oracle_eps, 'eps')
  np.testing.assert_allclose(d(x0 + sigma * eps, jnp.float32(sigma)), x0, atol=1e-5)


def test_edm_loss_is_weighted_denoising_error():
  """EDM eq. 8: unit-weight F error == lambda(sigma) ||D - x0||^2, lambda = 1 / c_out^2."""
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  x0 = jax.random.normal(k1, (4, 3))
  eps = jax.random.normal(k2, (4, 3))
  sigma = jnp.array([0.01, 0.3, 2.0, 50.0])
  w = jax.random.normal(k3, (3, 3)) * 0.3
  net = lambda x, c: jnp.tanh(x @ w) + c[:, None]
  loss = losses.edm_loss(net, x0, eps, sigma, 0.5)
  d = jnp.stack([param.edm_denoiser(net, 0.5)(x0[i:i + 1] + sigma[i] * eps[i:i + 1], sigma[i])[0]
                 for i in range(4)])
  _, c_out, _ = param.edm_coefficients(sigma, 0.5)
  np.testing.assert_allclose(loss, jnp.mean((d - x0) ** 2, -1) / c_out ** 2, rtol=1e-4)


def test_min_snr_weighting_is_target_independent():
  """Min-SNR-gamma weights the x0-space error by min(SNR, gamma) for every target."""
  k1, k2 = jax.random.split(jax.random.key(2))
  x0 = jax.random.normal(k1, (5, 4))
  eps = jax.random.normal(k2, (5, 4))
  logsnr = jnp.linspace(-4, 6, 5)
  fixed_x0 = x0 * 0.9                         # one fixed (imperfect) x0 prediction
  out = {}
  for target in param.TARGETS:
    def net(z, c, target=target):
      return param.vp_target(target, fixed_x0, (z - schedules.vp_alpha_sigma(logsnr)[0][:, None]
                                                * fixed_x0) /
                             schedules.vp_alpha_sigma(logsnr)[1][:, None], logsnr)
    out[target] = losses.vp_loss(net, x0, eps, logsnr, target, 'min_snr', 5.0)
  expected = jnp.minimum(jnp.exp(logsnr), 5.0) * jnp.mean((fixed_x0 - x0) ** 2, -1)
  for target in param.TARGETS:
    np.testing.assert_allclose(out[target], expected, rtol=2e-3)


# --- likelihood -----------------------------------------------------------------------------

def test_discrete_decoders_normalize():
  levels = jnp.linspace(-1, 1, 256)
  mean = jnp.full((256, 1), 0.137)
  p = jnp.exp(likelihood.discretized_gaussian_log_prob(levels[:, None], mean, 0.05))
  np.testing.assert_allclose(p.sum(), 1.0, atol=1e-5)
  x_noisy = jnp.full((256, 1), -0.42)
  q = jnp.exp(likelihood.categorical_decoder_log_prob(levels[:, None], x_noisy, 0.01))
  np.testing.assert_allclose(q.sum(), 1.0, atol=1e-5)


_LEVELS = np.linspace(-1, 1, 256)


def _discretized_gaussian_data(n, std=0.3, seed=0):
  """Gaussian data rounded to the 256-level grid: samples [n, 1], level probabilities, and the
  exact discrete entropy (nats)."""
  rng = np.random.default_rng(seed)
  edges = np.concatenate([[-np.inf], (_LEVELS[1:] + _LEVELS[:-1]) / 2, [np.inf]])
  p = np.diff(stats.norm.cdf(edges, scale=std))
  x = rng.choice(_LEVELS, size=(n, 1), p=p)
  return jnp.asarray(x, jnp.float32), p, float(-np.sum(p[p > 0] * np.log(p[p > 0])))


def _exact_x0_fn(p):
  """E[x0 | z] for x0 on the 256 levels with probabilities p: the optimal denoiser."""
  log_p = jnp.log(jnp.asarray(np.maximum(p, 1e-300), jnp.float32))
  levels = jnp.asarray(_LEVELS, jnp.float32)

  def x0_fn(z, logsnr):
    alpha, sigma = schedules.vp_alpha_sigma(logsnr)
    alpha, sigma = alpha[:, None], sigma[:, None]
    logits = log_p - 0.5 * ((z - alpha * levels) / sigma) ** 2     # [B, 256]
    return jnp.sum(jax.nn.softmax(logits, -1) * levels, -1, keepdims=True)
  return x0_fn


def test_continuous_time_bound_is_tight_with_the_exact_denoiser():
  """VDM's bound with the exact denoiser equals the data's discrete entropy (up to the small
  prior mismatch at logsnr(1)), and never falls below it."""
  x, p, entropy = _discretized_gaussian_data(20000)
  logsnr_fn = lambda t: schedules.logsnr_and_derivative(
      lambda s: -(-13.3 + (5.0 + 13.3) * s), t)        # VDM's fixed linear gamma schedule
  out = jax.jit(lambda k: likelihood.continuous_time_nll(_exact_x0_fn(p), x, logsnr_fn, k, 4))(
      jax.random.key(3))
  nll = float(jnp.mean(out['nll']))
  se = float(jnp.std(out['nll']) / np.sqrt(len(x)))
  assert nll >= entropy - 3 * se
  assert nll - entropy < 0.01 + 3 * se, (nll, entropy, se)


def test_discrete_time_bound_with_the_exact_denoiser():
  """Ho et al.'s T=1000 bound: above the entropy, by about the decoder's bin-level loss."""
  x, p, entropy = _discretized_gaussian_data(20000, seed=1)
  levels = jnp.asarray(schedules.discrete_logsnr(schedules.linear_betas(1000)))
  out = jax.jit(lambda k: likelihood.discrete_time_nll(_exact_x0_fn(p), x, levels, k, 4))(
      jax.random.key(4))
  nll = float(jnp.mean(out['nll']))
  assert entropy < nll < entropy + 1.0, (nll, entropy)
  assert float(jnp.mean(out['prior'])) < 1e-3      # q(x_T | x0) is ~N(0, I) at T = 1000


# --- the family in the harness --------------------------------------------------------------

def _init_and_step(config, mesh, batch):
  """(host copy of the initial params, state after one train step, its metrics) on `mesh`.

  The init key is 'rbg': a threefry key costs ~40 s of XLA CPU compile per U-Net init (its
  hash is compiled once per parameter shape) and the init values are only a starting point
  here; the step's key, whose per-example splitting across devices is under test, stays the
  default threefry."""
  exp = trainer.build(config, mesh)
  state = exp.init(jax.random.key(0, impl='rbg'), parallel.host_batch_to_global(batch, mesh))
  init = jax.tree.map(np.array, parallel.to_host(state.params))   # copies: the step donates
  state, metrics = exp.train_step(state, parallel.host_batch_to_global(batch, mesh),
                                  jax.random.key(1))
  return init, state, metrics


# The U-Net (two levels, attention, image data) under data parallelism is the vdm case; the
# other processes' step logic does not depend on the network, so they run on the toy MLP.
@pytest.mark.parametrize('process,toy,extra', [
    ('ddpm', True, {}), ('vdm', False, {'schedule': 'learned'}), ('edm', True, {}),
    ('ddpm', True, {'num_timesteps': 0, 'schedule': 'cosine', 'target': 'v'})])
def test_two_device_step_equals_one_device_step(process, toy, extra):
  assert jax.device_count() == 2
  config = tiny(process, toy, **extra)
  # Plain SGD: Adam's first step is ~lr * sign(grad), which flips on float noise where a
  # gradient is ~0 (seen in the learned schedule's biases), so it would not test the sum.
  config.optimizer.name = 'sgd'
  config.optimizer.lr = 0.1
  configs.validate(config, 2)
  batch = next(pipeline.train_iterator(config.data, config.train.batch_size, config.seed))
  inits, out = [], []
  for devices in (jax.devices()[:1], jax.devices()):
    init, state, metrics = _init_and_step(config, parallel.make_mesh(devices), batch)
    inits.append(init)
    out.append(parallel.to_host((state.params, metrics)))
  chex.assert_trees_all_equal(inits[0], inits[1])
  chex.assert_trees_all_close(out[0], out[1], atol=2e-5, rtol=2e-5)
  assert np.isfinite(out[0][1]['loss'])
  # The step moved every parameter group, the learned schedule's included (VDM: its endpoints
  # by the bound, its interior by the variance-minimizing gradient).
  init = inits[0]
  for group in init:
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), init[group], out[0][0][group])
    assert max(jax.tree.leaves(moved)) > 0, group


@pytest.mark.parametrize('process,extra,sampler', [
    ('ddpm', {}, 'ddpm'),
    pytest.param('ddpm', {'num_timesteps': 0, 'schedule': 'cosine', 'target': 'v'}, 'dpmpp_2m',
                 marks=pytest.mark.slow),
    pytest.param('vdm', {'schedule': 'learned'}, 'ddim', marks=pytest.mark.slow),
    pytest.param('edm', {}, 'heun', marks=pytest.mark.slow),
])
def test_each_process_trains_evaluates_and_samples(tmp_path, process, extra, sampler):
  config = tiny(process, **extra)
  # One 8x8 level (attention kept): the harness path (train, eval bits/dim, sample, visualize)
  # does not depend on the depth, and the two-level U-Net is exercised by
  # test_two_device_step_equals_one_device_step (its train step) and test_diffusion_networks.
  # Halves the XLA compile time of this run.
  config.model.channel_mults, config.model.attn_resolutions = '1', '8'
  config.sampler.name = sampler
  final = trainer.train(config, str(tmp_path))['eval']
  assert np.isfinite(final['loss'])
  if process != 'edm':
    assert 0 < final['bpd'] < 16, final          # bits/dim of 8-bit data: finite, sane
    parts = final['bpd_prior'] + final['bpd_diffusion'] + final['bpd_recon']
    assert abs(parts - final['bpd']) < 1e-3 * final['bpd'], final
  grid = {'ddpm': 'discrete', 'dpmpp_2m': 'logsnr_uniform', 'ddim': 'time_uniform',
          'heun': 'karras'}[sampler]
  path = tmp_path / 'samples' / f'samples_0000004_{sampler}5-{grid}'   # the auto grid, named
  with np.load(f'{path}.npz') as z:
    images = z['images']
  with open(f'{path}.json') as f:
    made_by = json.load(f)
  assert made_by['sampler']['name'] == sampler and made_by['sampler']['grid'] == grid
  assert made_by['step'] == 4 and made_by['params'] == 'ema'
  assert images.shape == (4, 8, 8, 1) and np.isfinite(images).all()
  assert images.min() >= 0 and images.max() <= 1


def test_class_conditional_guidance_zero_is_conditional_sampling():
  config = tiny('ddpm', toy=True)
  config.model.class_conditional = True
  mesh = parallel.make_mesh(jax.devices()[:1])
  exp = trainer.build(config, mesh)
  batch = next(pipeline.train_iterator(config.data, config.train.batch_size, config.seed))
  state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, mesh))
  state, _ = exp.train_step(state, parallel.host_batch_to_global(batch, mesh), jax.random.key(1))
  family = exp.family
  params = parallel.to_host(state.eval_params)
  base = family.sample_with(params, jax.random.key(5), 4)
  guided_cfg = config.sampler.copy_and_resolve_references()
  guided_cfg.guidance = 0.0
  again = family.sample_with(params, jax.random.key(5), 4, guided_cfg)
  np.testing.assert_array_equal(base['points'], again['points'])
  guided_cfg.guidance = 3.0
  pushed = family.sample_with(params, jax.random.key(5), 4, guided_cfg)
  assert np.abs(np.asarray(pushed['points']) - np.asarray(base['points'])).max() > 0


@pytest.mark.parametrize('override,field', [
    ({'diffusion.process': 'flow'}, 'diffusion.process'),
    ({'diffusion.schedule': 'learned'}, 'diffusion.schedule'),
    ({'sampler.guidance': 2.0}, 'sampler.guidance'),
    ({'sampler.steps': 5000}, 'sampler.steps'),
    ({'model.channel_mults': '1,2,2,2,2'}, 'model.channel_mults'),
    ({'model.arch': 'mlp'}, 'model.arch'),
    ({'data.name': 'ring8', 'model.arch': 'mlp', 'diffusion.process': 'vdm'},
     'diffusion.process'),
])
def test_config_errors_name_the_field(override, field):
  config = tiny()
  for k, v in override.items():
    section, name = k.split('.')
    config[section][name] = v
  with pytest.raises(configs.ConfigError, match=field.replace('.', r'\.')):
    configs.validate(config, 1)


def test_toy_run_is_evaluated_by_mode_coverage(tmp_path):
  from research import evaluate
  config = tiny('ddpm', toy=True)
  config.eval.num_samples = 64
  trainer.train(config, str(tmp_path))
  result = evaluate.evaluate_run(str(tmp_path))
  m = result['metrics']
  assert result['num_samples'] == 64 and m['num_modes'] == 8
  assert 0 <= m['modes_captured'] <= 8 and 0 <= m['high_quality_fraction'] <= 1
  assert np.isfinite(m['frechet_distance_2d'])
  assert 'mode_coverage' in result['notes']          # fewer than the protocol's 2,500


def test_evaluate_standard_error_shrinks_as_draws_grow(tmp_path):
  """The 2-D Frechet distance over independent draws of 64 points (a 4-step model: its mode
  coverage and precision are 0 in every draw): the s.e. over 16 draws is below that over 4
  (expected ratio 1/2)."""
  from research import evaluate
  config = tiny('ddpm', toy=True)
  config.eval.num_samples = 64
  trainer.train(config, str(tmp_path))
  few = evaluate.evaluate_run(str(tmp_path), num_draws=4)
  many = evaluate.evaluate_run(str(tmp_path), num_draws=16)
  assert few['num_draws'] == 4 and many['num_draws'] == 16
  assert many['draws'][:4] == few['draws']                 # the same first draws, cached
  se_few, se_many = (r['metrics']['frechet_distance_2d_se'] for r in (few, many))
  assert 0 < se_many < se_few, (se_many, se_few)
  with pytest.raises(ValueError, match='draws'):
    evaluate.evaluate_run(str(tmp_path), num_draws=0)


def test_two_samplers_on_one_checkpoint_coexist_and_are_scored_apart(tmp_path):
  """--mode=sample with another sampler adds a set beside the run's own (never overwrites it);
  research.evaluate scores each set on its own and says which sampler made it."""
  from research import evaluate, sample_sets
  config = tiny('ddpm', toy=True)
  config.eval.num_samples = 64
  final = trainer.train(config, str(tmp_path))['eval']
  assert 'raw_loss' in final and final['raw_loss'] != final['loss']   # EMA and raw params
  other = config.copy_and_resolve_references()
  other.sampler.name, other.sampler.steps = 'dpmpp_2m', 3
  trainer.sample_checkpoint(other, str(tmp_path))
  assert sample_sets.latest_tags(str(tmp_path)) == ['ddpm5-discrete', 'dpmpp_2m3-logsnr_levels']
  with pytest.raises(ValueError, match='--samples'):     # ambiguous: which set?
    evaluate.evaluate_run(str(tmp_path))
  results = {t: evaluate.evaluate_run(str(tmp_path), tag=t)
             for t in sample_sets.latest_tags(str(tmp_path))}
  for tag, name in (('ddpm5-discrete', 'ddpm'), ('dpmpp_2m3-logsnr_levels', 'dpmpp_2m')):
    with open(tmp_path / f'eval_{tag}.json') as f:
      saved = json.load(f)
    assert saved['samples']['tag'] == tag and saved['samples']['sampler']['name'] == name
    assert saved['samples']['file'].endswith(f'samples_0000004_{tag}.npz')
    assert results[tag]['num_samples'] == 64
    assert (tmp_path / 'samples' / f'scatter_0000004_{tag}.png').exists()   # 2-D: a picture
  a, b = (results[t]['metrics']['frechet_distance_2d'] for t in sorted(results))
  assert a != b                                           # two different sample sets scored


def test_sampler_table_merge(tmp_path):
  from research.diffusion import sampler_table
  base = {'step': 7, 'num_samples': 10, 'num_real': 20, 'feature_space': 'f',
          'test_accuracy': 0.9, 'reference_test_vs_train': {}}
  paths = []
  for i, rows in enumerate([[{'name': 'ddpm'}], [{'name': 'ddim'}, {'name': 'heun'}]]):
    paths.append(str(tmp_path / f'{i}.json'))
    with open(paths[-1], 'w') as f:
      json.dump(dict(base, rows=rows), f)
  merged = sampler_table.merge(paths)
  assert [r['name'] for r in merged['rows']] == ['ddpm', 'ddim', 'heun']
  assert merged['step'] == 7
  with open(paths[1], 'w') as f:
    json.dump(dict(base, step=8, rows=[]), f)
  with pytest.raises(ValueError, match='step=8'):
    sampler_table.merge(paths)


def test_sampler_table_specs():
  from research.diffusion import sampler_table
  assert sampler_table.parse_spec('ddim:50') == {'name': 'ddim', 'steps': 50, 'grid': 'auto'}
  assert sampler_table.parse_spec('heun:18:karras')['grid'] == 'karras'
  for bad in ('ddim', 'ddim:x', 'ddim:0', 'a:1:b:c'):
    with pytest.raises(ValueError, match='name:steps'):
      sampler_table.parse_spec(bad)


def test_auto_grid_is_each_samplers_own():
  """grid='auto': DPM-Solver++ steps uniformly in log-SNR (snapped to the training levels of a
  discrete model), Heun/Euler on Karras' grid, DDPM and DDIM on the training levels (DDIM's
  uniform spacing); explicit grids are kept."""
  from research.diffusion import family
  config = tiny('ddpm', toy=True)
  diff = family.Diffusion(config)
  want = {'ddpm': 'discrete', 'ddim': 'discrete', 'dpmpp_2m': 'logsnr_levels',
          'heun': 'karras', 'euler': 'karras'}
  for name, grid in want.items():
    s = config.sampler.copy_and_resolve_references()
    s.name, s.steps = name, 20
    assert diff.grid(s) == grid, name
    sig = np.asarray(diff.sigmas(None, s))
    if grid == 'logsnr_levels':    # training levels only, noisiest to least noisy
      levels = np.exp(-0.5 * np.asarray(diff._levels, np.float64))
      assert sig[0] == pytest.approx(levels[-1], rel=1e-5)
      assert sig[-2] == pytest.approx(levels[0], rel=1e-5)
  s.name, s.grid = 'dpmpp_2m', 'logsnr_uniform'   # equal log-SNR steps, between the levels
  sig = np.asarray(diff.sigmas(None, s))
  np.testing.assert_allclose(np.diff(np.log(sig[:-1])), np.log(sig[1] / sig[0]), rtol=1e-4)
  s.name, s.grid = 'dpmpp_2m', 'discrete'
  assert diff.grid(s) == 'discrete'
  config.sampler.name, config.sampler.steps = 'dpmpp_2m', 2000   # not bound to T levels
  configs.validate(config, 1)


def test_sampler_table_on_2d_data_with_draws_and_bootstrap(tmp_path):
  """The sampler table on a toy run: mode coverage per sampler, mean ± s.e. over draws, or a
  bootstrap s.e. from one draw; rows name the resolved grid."""
  from research.diffusion import sampler_table
  config = tiny('ddpm', toy=True)
  trainer.train(config, str(tmp_path))
  specs = [sampler_table.parse_spec(s) for s in ('ddim:5', 'dpmpp_2m:5')]
  out = sampler_table.sampler_table(str(tmp_path), specs, num_samples=32, draws=3)
  assert [r['grid'] for r in out['rows']] == ['discrete', 'logsnr_levels']
  for r in out['rows']:
    assert r['num_draws'] == 3 and r['se_method'] == 'draws'
    assert r['frechet_distance_2d_se'] > 0 and 0 <= r['modes_captured'] <= 8
  assert 'mean ± s.e. over 3 draws' in sampler_table.format_table(out)
  boot = sampler_table.sampler_table(str(tmp_path), specs[:1], num_samples=32, draws=1,
                                     bootstrap=5, output=str(tmp_path / 'b.json'))
  row = boot['rows'][0]
  assert row['num_draws'] == 1 and row['num_bootstrap'] == 5 and row['frechet_distance_2d_se'] > 0
  assert '| ddim 5 (discrete) | 5 |' in sampler_table.format_row(row) and ' ± ' in \
      sampler_table.format_row(row)


def test_sampler_table_average_over_seeds(tmp_path):
  from research.diffusion import sampler_table
  paths = []
  for seed, (fd, hq) in enumerate([(1.0, 0.5), (2.0, 0.7), (3.0, 0.9)]):
    rows = [{'name': 'ddpm', 'steps': 10, 'grid': 'discrete', 'nfe': 10, 'seconds': 1.0,
             'frechet_distance_2d': fd, 'frechet_distance_2d_se': 9.0, 'high_quality_fraction': hq,
             'modes_captured': 8.0, 'reverse_kl': 0.1}]
    paths.append(str(tmp_path / f'{seed}.json'))
    with open(paths[-1], 'w') as f:
      json.dump({'step': 100, 'num_samples': 5, 'num_real': 9, 'feature_space': 'raw',
                 'test_accuracy': 0, 'toy': True, 'draws': 3, 'rows': rows,
                 'reference_test_vs_train': {}}, f)
  out = sampler_table.average(paths)
  row = out['rows'][0]
  assert row['num_runs'] == 3 and row['frechet_distance_2d'] == pytest.approx(2.0)
  assert row['frechet_distance_2d_se'] == pytest.approx(1 / np.sqrt(3))   # over seeds, not 9
  assert row['modes_captured_se'] == 0 and row['nfe'] == 10
  assert 'over 3 seeds' in sampler_table.format_table(out)
  with open(paths[2], 'w') as f:
    json.dump({'step': 100, 'rows': []}, f)
  with pytest.raises(ValueError, match='no row'):
    sampler_table.average(paths)
