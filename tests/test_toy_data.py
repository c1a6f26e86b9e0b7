"""2-D toy datasets (ring8, grid25, swiss_roll) through the data pipeline."""
import hashlib
import math
import os
import subprocess
import sys

import grain
import numpy as np
import pytest

from research import configs
from research.data import datasets, pipeline, toy
from research.evaluation import toy_mixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIXTURES = ('ring8', 'grid25')


def _cfg(name='ring8', **augment_kw):
  c = configs.common_defaults().data
  c.name = name
  c.read_threads = 2
  for k, v in augment_kw.items():
    c.augment[k] = v
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _error(c) -> str:
  with pytest.raises(configs.ConfigError) as e:
    datasets.validate(c)
  msg = str(e.value)
  assert '\n' not in msg
  return msg


# ---------------------------------------------------------------------------------------------
# Registry


@pytest.mark.parametrize('name,k', [('ring8', 8), ('grid25', 25), ('swiss_roll', 1)])
def test_info_and_registry(name, k):
  c = _cfg(name)
  assert datasets.spec(name).kind == 'toy' and datasets.spec('digits').kind != 'toy'
  info = datasets.info(c)
  assert info == datasets.DatasetInfo((2,), k, 100000, 10000, 'x')
  assert info.shape == info.image_shape == (2,)
  c.train_split, c.eval_split, c.num_eval_examples = 'train[:90%]', 'train[90%:]+test', 300
  info = datasets.info(c)
  assert (info.num_train, info.num_eval) == (90000, 300)
  src = datasets.data_source(c, 'test')
  assert len(src) == 10000 and src[3]['x'].shape == (2,) and src[3]['x'].dtype == np.float32


def test_image_info_unchanged():
  c = _cfg('digits')
  c.read_threads = 4
  assert datasets.DATASETS['digits'].image_shape == (8, 8, 1)
  info = datasets.info(c)
  assert info.key == 'image' and info.image_shape == info.shape == (8, 8, 1)


def test_split_slicing():
  x, y = toy.split_arrays('grid25', 'train')
  assert toy.split_size('train[:90%]') == 90000
  xs, ys = toy.split_arrays('grid25', 'train[-1000:]+test[:10]')
  np.testing.assert_array_equal(xs[:1000], x[-1000:])
  np.testing.assert_array_equal(xs[1000:], toy.split_arrays('grid25', 'test')[0][:10])
  np.testing.assert_array_equal(ys[:1000], y[-1000:])
  np.testing.assert_array_equal(toy.split_arrays('grid25', 'train[100:200]')[0], x[100:200])
  assert not x.flags.writeable   # the cached split cannot be changed by a caller
  with pytest.raises(ValueError, match='bad toy split'):
    toy.split_indices('validation')


def test_generating_parameters_match_the_metric():
  np.testing.assert_array_equal(toy.modes('ring8'), toy_mixtures.ring8_modes())
  np.testing.assert_array_equal(toy.modes('grid25'), toy_mixtures.grid25_modes())
  assert toy.mode_std('ring8') == toy_mixtures.RING8_STD == 0.01
  assert toy.mode_std('grid25') == toy_mixtures.GRID25_STD == 0.05
  assert toy.modes('swiss_roll') is None and toy.mode_std('swiss_roll') is None
  with pytest.raises(ValueError, match='unknown toy dataset'):
    toy.modes('ring9')


# ---------------------------------------------------------------------------------------------
# Batches


@pytest.mark.parametrize('name', toy.NAMES)
def test_batch_keys_shapes_and_dtypes(name):
  c = _cfg(name)
  b = next(pipeline.train_iterator(c, 32, seed=0))
  assert set(b) == {'x', 'label'}
  assert b['x'].shape == (32, 2) and b['x'].dtype == np.float32
  assert b['label'].shape == (32,) and b['label'].dtype == np.int32
  assert 0 <= b['label'].min() and b['label'].max() < datasets.info(c).num_classes
  e = next(pipeline.eval_batches(c, 64))
  assert set(e) == {'x', 'label', 'mask'}
  assert e['x'].shape == (64, 2) and e['x'].dtype == np.float32
  assert e['label'].dtype == np.int32 and e['mask'].dtype == np.float32
  # No uint8 scaling: batch rows are the generated points themselves.
  np.testing.assert_array_equal(e['x'], toy.split_arrays(name, 'test')[0][:64])


@pytest.mark.parametrize('name', toy.NAMES)
def test_splits_are_deterministic_and_distinct(name):
  x, y = toy.split_arrays(name, 'train')
  xt, _ = toy.split_arrays(name, 'test')
  assert x.shape == (100000, 2) and x.dtype == np.float32 and y.dtype == np.int64
  assert xt.shape == (10000, 2)
  again, again_y = toy.sample(name, 100000, toy.split_seed(name, 'train'))
  np.testing.assert_array_equal(again, x)
  np.testing.assert_array_equal(again_y, y)
  assert not np.array_equal(x[:10000], xt)
  assert len({r.tobytes() for r in x} & {r.tobytes() for r in xt}) == 0


def test_generation_is_fixed_across_processes_and_reads_no_tfds():
  """A fresh interpreter generates the same bytes, and toy batches import neither TFDS nor TF."""
  code = ('import hashlib, sys; from research import configs; '
          'from research.data import pipeline, toy; '
          'c = configs.common_defaults().data; c.name = "grid25"; c.read_threads = 1; '
          'next(pipeline.train_iterator(c, 8, seed=0)); '
          'bad = [m for m in ("tensorflow_datasets", "tensorflow") if m in sys.modules]; '
          'assert not bad, bad; '
          'print(hashlib.sha256(toy.split_arrays("grid25", "train")[0].tobytes()).hexdigest())')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=120,
                       capture_output=True, text=True).stdout.split()[-1]
  assert out == hashlib.sha256(toy.split_arrays('grid25', 'train')[0].tobytes()).hexdigest()


def test_train_stream_is_deterministic_and_permutes_each_epoch():
  c = _cfg('ring8')
  c.train_split = 'train[:1000]'
  a = _take(pipeline.train_iterator(c, 250, seed=3), 8)
  _assert_batches_equal(a, _take(pipeline.train_iterator(c, 250, seed=3), 8))
  other = next(pipeline.train_iterator(c, 250, seed=4))
  assert not np.array_equal(a[0]['x'], other['x'])
  want = sorted(r.tobytes() for r in toy.split_arrays('ring8', 'train')[0][:1000])
  epochs = [np.concatenate([b['x'] for b in a[i:i + 4]]) for i in (0, 4)]
  for e in epochs:
    assert sorted(r.tobytes() for r in e) == want   # every point exactly once an epoch
  assert not np.array_equal(epochs[0], epochs[1])


def test_resume_with_get_state_set_state():
  c = _cfg('swiss_roll')
  c.train_split = 'train[:2000]'
  it = pipeline.train_iterator(c, 64, seed=1)
  _take(it, 3)
  state = it.get_state()
  want = _take(it, 40)                 # crosses epoch boundaries (2000 / 64 ~ 31 steps)
  fresh = pipeline.train_iterator(c, 64, seed=1)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 40), want)
  it.set_state(state)
  _assert_batches_equal(_take(it, 40), want)


def test_resume_through_orbax_checkpoint(tmp_path):
  import orbax.checkpoint as ocp
  c = _cfg('grid25')
  it = pipeline.train_iterator(c, 32, seed=2)
  _take(it, 5)
  with ocp.CheckpointManager(str(tmp_path / 'ckpt')) as mngr:
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    want = _take(it, 4)
    fresh = pipeline.train_iterator(c, 32, seed=2)
    mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(_take(fresh, 4), want)


def test_two_hosts_take_disjoint_halves_of_each_global_batch():
  c = _cfg('ring8')
  c.train_split = 'train[:500]'
  steps, global_batch = 12, 48      # 12 * 48 > 500: crosses an epoch boundary
  single = _take(pipeline.train_iterator(c, global_batch, seed=5), steps)
  hosts = [_take(pipeline.train_iterator(c, global_batch, 5, p, 2), steps) for p in range(2)]
  for s in range(steps):
    h0, h1 = hosts[0][s], hosts[1][s]
    assert h0['x'].shape == h1['x'].shape == (global_batch // 2, 2)
    np.testing.assert_array_equal(h0['x'], single[s]['x'][:global_batch // 2])
    np.testing.assert_array_equal(h1['x'], single[s]['x'][global_batch // 2:])
    np.testing.assert_array_equal(np.concatenate([h0['label'], h1['label']]),
                                  single[s]['label'])
    assert not {r.tobytes() for r in h0['x']} & {r.tobytes() for r in h1['x']}


@pytest.mark.parametrize('procs', [1, 2])
def test_eval_is_padded_and_masked(procs):
  c = _cfg('grid25')
  c.num_eval_examples = 300
  xs, ys = toy.split_arrays('grid25', 'test')
  global_batch = 128
  assert pipeline.num_eval_batches(c, global_batch) == 3        # 300 = 128 + 128 + 44
  hosts = [list(pipeline.eval_batches(c, global_batch, p, procs)) for p in range(procs)]
  for h in hosts:
    assert len(h) == 3
    assert all(b['x'].shape == (global_batch // procs, 2) for b in h)
  glob = [{k: np.concatenate([h[s][k] for h in hosts]) for k in ('x', 'label', 'mask')}
          for s in range(3)]
  mask = np.concatenate([g['mask'] for g in glob])
  np.testing.assert_array_equal(mask, (np.arange(384) < 300).astype(np.float32))
  x = np.concatenate([g['x'] for g in glob])
  np.testing.assert_array_equal(x[:300], xs[:300])
  np.testing.assert_array_equal(np.concatenate([g['label'] for g in glob])[:300], ys[:300])
  assert np.all(x[300:] == 0)


# ---------------------------------------------------------------------------------------------
# The distributions


@pytest.mark.parametrize('name', MIXTURES)
@pytest.mark.parametrize('split', ['train', 'test'])
def test_points_follow_the_mixture(name, split):
  x, y = toy.split_arrays(name, split)
  centres, std = toy.modes(name), toy.mode_std(name)
  k, n = len(centres), len(x)
  # Equal weights: each count is Binomial(n, 1/k); allow 5 sigma.
  counts = np.bincount(y, minlength=k)
  assert len(counts) == k
  sigma = math.sqrt(n * (1 / k) * (1 - 1 / k))
  assert np.all(np.abs(counts - n / k) < 5 * sigma), counts
  # Labels are the nearest mode; the offsets from it are N(0, std^2 I).
  d = x[:, None, :].astype(np.float64) - centres[None]
  np.testing.assert_array_equal(y, np.linalg.norm(d, axis=-1).argmin(1))
  offset = x - centres[y]
  np.testing.assert_allclose(offset.std(0), std, rtol=0.03)
  np.testing.assert_allclose(offset.mean(0), 0, atol=4 * std / math.sqrt(n))
  # Mean distance to the nearest mode of a 2-D isotropic Gaussian: std * sqrt(pi / 2).
  np.testing.assert_allclose(np.linalg.norm(offset, axis=1).mean(), std * math.sqrt(math.pi / 2),
                             rtol=0.02)
  # The metric sees the training data as perfect: every mode, ~98.9% within 3 std.
  cov = toy_mixtures.mode_coverage(x, centres, std)
  assert cov['modes_captured'] == k
  assert abs(cov['high_quality_fraction'] - (1 - math.exp(-4.5))) < 0.004
  assert cov['reverse_kl'] < 0.01


def test_swiss_roll_is_centred_with_unit_scale():
  x, y = toy.split_arrays('swiss_roll', 'train')
  assert np.all(y == 0)
  assert np.all(np.abs(x.mean(0)) < 0.03)
  assert np.all((0.9 < x.std(0)) & (x.std(0) < 1.1))
  # A roll, not a blob: the radius from the roll's centre grows with the angle parameter, so
  # points spread over radii ~[1.5 pi, 4.5 pi] / scale.
  r = np.linalg.norm(x * toy.SWISS_ROLL_SCALE + toy.SWISS_ROLL_CENTER, axis=1)
  assert np.percentile(r, 1) > 1.3 * np.pi and np.percentile(r, 99) < 4.7 * np.pi


# ---------------------------------------------------------------------------------------------
# Validation


def test_validate_accepts_toy_defaults():
  for name in toy.NAMES:
    datasets.validate(_cfg(name))


def test_tfds_source_is_a_clear_error():
  c = _cfg('grid25')
  c.source = 'tfds'
  msg = _error(c)
  assert msg.startswith("config.data.source='tfds'") and "source='package'" in msg
  assert 'no TFDS catalog version' in msg


@pytest.mark.parametrize('field,value', [('flip', True), ('crop_pad', 2), ('dequantize', True),
                                         ('binarize', 'dynamic'), ('binarize', 'threshold')])
def test_image_augmentation_is_a_clear_error(field, value):
  msg = _error(_cfg('ring8', **{field: value}))
  assert msg.startswith(f'config.data.augment.{field}=') and 'toy dataset' in msg
  with pytest.raises(configs.ConfigError):
    pipeline.train_iterator(_cfg('ring8', **{field: value}), 8, seed=0)


def test_dedup_is_a_clear_error():
  c = _cfg('swiss_roll')
  c.dedup = 'exact'
  msg = _error(c)
  assert msg.startswith("config.data.dedup='exact'") and 'toy dataset' in msg


def test_bad_toy_splits_are_clear_errors():
  c = _cfg('ring8')
  c.eval_split = 'validation'
  assert "config.data.eval_split='validation': unknown split" in _error(c)
  c = _cfg('ring8')
  c.num_eval_examples = 10001
  assert 'config.data.num_eval_examples' in _error(c)
