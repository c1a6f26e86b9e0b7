"""The feature network (classifier family, cached per dataset) and `python -m research.evaluate`.

All on the 8x8 digits: the feature net trains in seconds, the VAE run is helpers.tiny_digits.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
from research import configs, evaluate, trainer
from research.evaluation import features, stats


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  """GENLAB_CACHE in a tmp dir for the whole module (the feature net trains once)."""
  path = str(tmp_path_factory.mktemp('genlab_cache'))
  old = os.environ.get('GENLAB_CACHE')
  os.environ['GENLAB_CACHE'] = path
  yield path
  if old is None:
    del os.environ['GENLAB_CACHE']
  else:
    os.environ['GENLAB_CACHE'] = old


@pytest.fixture(scope='module')
def vae_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('vae_run'))
  trainer.train(helpers.tiny_digits(num_steps=20), workdir)
  return workdir


def test_classifier_config_validates():
  c = helpers.load_config('features_digits')
  configs.validate(c, num_devices=2)
  c.model.channels = ''
  with pytest.raises(configs.ConfigError, match='model.channels'):
    configs.validate(c, num_devices=2)


def test_feature_net_trains_and_is_cached(cache):
  before = features.TRAIN_COUNT
  feature_fn, probs_fn, info = features.load_feature_fn('digits')
  assert features.TRAIN_COUNT == before + 1
  workdir = os.path.join(cache, 'features_digits')
  assert info['workdir'] == workdir
  assert info['test_accuracy'] > 0.8, info          # chance is 0.1
  assert 'features_digits' in info['feature_space']
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  mtime = os.path.getmtime(ckpt_dir)

  # Second call: restored from the cache, not retrained.
  feature_fn2, _, info2 = features.load_feature_fn('digits')
  assert features.TRAIN_COUNT == before + 1
  assert os.path.getmtime(ckpt_dir) == mtime
  assert info2['test_accuracy'] == info['test_accuracy']

  rng = np.random.default_rng(0)
  x = rng.uniform(size=(7, 8, 8, 1)).astype(np.float32)
  f, p = feature_fn(x), probs_fn(x)
  assert f.shape == (7, info['feature_dim']) and p.shape == (7, 10)
  np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
  # Padding / batching does not change an example's features; the cached net gives the same.
  np.testing.assert_allclose(feature_fn(x[:3]), f[:3], atol=1e-5)
  np.testing.assert_allclose(feature_fn2(x), f, atol=1e-5)
  with pytest.raises(ValueError, match='images must be'):
    feature_fn(np.zeros((2, 28, 28, 1), np.float32))


EXPECTED = ('frechet_distance', 'kernel_distance', 'precision', 'recall', 'density', 'coverage',
            'classifier_score', 'class_kl', 'class_total_variation', 'classes_missing',
            'copy_fraction')


def test_evaluate_cli_writes_eval_json(cache, vae_run):
  """`python -m research.evaluate` draws 40 samples (the run saved 16) and writes eval.json."""
  env = dict(os.environ, GENLAB_CACHE=cache)
  proc = subprocess.run([sys.executable, '-m', 'research.evaluate', f'--workdir={vae_run}',
                         '--num_samples=40'], cwd=helpers.ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'feature space: features_digits' in proc.stdout
  assert 'frechet_distance' in proc.stdout and ' ± ' in proc.stdout
  with open(os.path.join(vae_run, 'eval.json')) as f:
    saved = json.load(f)
  assert saved['num_samples'] == 40 and saved['step'] == 20
  assert saved['num_draws'] == evaluate.DEFAULT_DRAWS == len(saved['draws'])
  for d in range(evaluate.DEFAULT_DRAWS):   # the first draw, then independent ones, cached
    name = f'eval_samples_0000020{f"_draw{d}" if d else ""}.npz'
    assert os.path.exists(os.path.join(vae_run, 'samples', name)), name
  assert 'features_digits' in saved['feature_space']
  assert saved['feature_net_test_accuracy'] > 0.8
  fds = [d['frechet_distance'] for d in saved['draws']]
  assert len(set(fds)) == len(fds)                          # different samples in each draw
  assert saved['metrics']['frechet_distance'] == pytest.approx(np.mean(fds))
  assert saved['metrics']['frechet_distance_se'] == pytest.approx(
      np.std(fds, ddof=1) / np.sqrt(len(fds)))
  for k in EXPECTED:
    assert np.isfinite(saved['metrics'][k]), k
    assert np.isfinite(saved['metrics'][f'{k}_se']), k
    assert saved['feature_space'] in saved['metric_names'][k]
  assert not saved['notes']
  assert np.isfinite(saved['reference_test_vs_train']['frechet_distance'])
  assert os.path.exists(saved['memorization']['worst_offenders_png'])
  assert os.listdir(os.path.join(vae_run, 'tb'))
  # Logged through the run's own writer: TensorBoard and a metrics.jsonl line per group.
  logged = [json.loads(l) for l in open(os.path.join(vae_run, 'metrics.jsonl'))]
  quality = [l for l in logged if l['split'] == 'sample_quality']
  assert quality and quality[-1]['frechet_distance'] == pytest.approx(
      saved['metrics']['frechet_distance']) and quality[-1]['step'] == saved['step']


def test_evaluate_skips_metrics_with_too_few_samples(cache, vae_run):
  from research import evaluate
  few = evaluate.evaluate_run(vae_run, num_samples=4)   # the first 4 of the saved 16
  assert few['num_samples'] == 4
  # k-NN metrics (k=5) need 6 samples a set: skipped with a note, the rest still computed.
  assert 'density' not in few['metrics'] and 'density_coverage' in few['notes']
  assert 'precision' not in few['metrics'] and 'precision_recall' in few['notes']
  assert np.isfinite(few['metrics']['frechet_distance'])
  assert 'density_coverage' in evaluate.format_table(few)


def test_evaluate_average_over_seeds(tmp_path):
  """`research.evaluate --average=A,B,C`: each metric's mean ± s.e. over the runs' eval.json
  (each run its mean over draws), from the command line, with the table in JSON too."""
  values = [10.0, 12.0, 17.0]
  paths = []
  for i, v in enumerate(values):
    p = tmp_path / f'seed_{i}.json'
    p.write_text(json.dumps({'metrics': {'frechet_distance': v, 'frechet_distance_se': 0.5,
                                         'precision': 0.5, 'num_draws': 5, 'note': 'x'}}))
    paths.append(str(p))
  got = evaluate.average(paths)
  mean, se, n = stats.mean_se(values)
  assert got['n'] == n == 3 and got['per_run']['frechet_distance'] == values
  assert got['metrics']['frechet_distance'] == pytest.approx(mean)
  assert got['metrics']['frechet_distance_se'] == pytest.approx(se)
  assert 'note' not in got['per_run'] and 'num_draws' not in got['per_run']
  out = tmp_path / 'avg.json'
  proc = subprocess.run([sys.executable, '-m', 'research.evaluate', f'--average={",".join(paths)}',
                         f'--out={out}'], cwd=helpers.ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'frechet_distance' in proc.stdout and ' ± ' in proc.stdout
  assert json.loads(out.read_text())['metrics']['frechet_distance'] == pytest.approx(mean)
