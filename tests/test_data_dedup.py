"""config.data.dedup: the train stream over the examples that survive deduplication."""
import os

import numpy as np
import pytest

from research import configs
from research.data import datasets, pipeline, readers, specs


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds_data_dedup'))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
  d = tmp_path / 'genlab_cache'
  monkeypatch.setenv('GENLAB_CACHE', str(d))
  return d


def _cfg(data_dir='', dedup='none', **kw):
  c = configs.common_defaults().data
  c.name = 'digits'
  c.data_dir = data_dir
  c.read_threads = 2
  c.dedup = dedup
  for k, v in kw.items():
    c[k] = v
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_exact_dedup_without_duplicates_leaves_the_stream_unchanged(data_dir, cache_dir):
  def aug(c):
    c.augment.flip, c.augment.crop_pad = True, 1
    return c
  want = _take(pipeline.train_iterator(_cfg(data_dir), 64, seed=1), 30)   # > 1 epoch
  want_aug = _take(pipeline.train_iterator(aug(_cfg(data_dir)), 64, seed=1), 3)
  got = _take(pipeline.train_iterator(_cfg(data_dir, 'exact'), 64, seed=1), 30)
  got_aug = _take(pipeline.train_iterator(aug(_cfg(data_dir, 'exact')), 64, seed=1), 3)
  for x, y in zip(want + want_aug, got + got_aug):
    for k in ('image', 'label'):
      np.testing.assert_array_equal(x[k], y[k])
  assert len(list(cache_dir.glob('genlab_dedup/digits-package-train-exact-*.npz'))) == 1


def _planted():
  """40 random 8x8 images, label = index; 5 and 17 copy 2, 30 copies 11 (exact); 33 is 20 with
  one pixel off by one grey level (near only)."""
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
  x[5] = x[17] = x[2]
  x[30] = x[11]
  x[33] = x[20]
  x[33, 0, 0, 0] = x[20, 0, 0, 0] ^ 1
  return x, np.arange(40, dtype=np.int64)


@pytest.mark.parametrize('mode,dropped', [('exact', {5, 17, 30}), ('near', {5, 17, 30, 33})])
def test_planted_duplicates_are_never_yielded(monkeypatch, caplog, mode, dropped):
  images, labels = _planted()
  monkeypatch.setattr(datasets, 'reader',
                      lambda cfg, split, train=False: readers.Reader(None, (images, labels)))
  kept = sorted(set(range(40)) - dropped)
  n = len(kept)
  with caplog.at_level('INFO'):
    it = pipeline.train_iterator(_cfg(dedup=mode), 6, seed=0)
  seen = np.concatenate([b['label'] for b in _take(it, n)])   # 6 * n positions = 6 epochs
  assert not set(seen.tolist()) & dropped
  for e in range(6):
    assert sorted(seen[e * n:(e + 1) * n].tolist()) == kept       # each kept index once an epoch
  assert not np.array_equal(seen[:n], seen[n:2 * n])             # fresh order each epoch
  np.testing.assert_array_equal(                                 # images follow their labels
      np.round(next(pipeline.train_iterator(_cfg(dedup=mode), 6, seed=0))['image'] * 255),
      images[seen[:6]])
  assert f'dedup: kept {n} of 40 train examples (exact dropped 3, near dropped {len(dropped) - 3})' \
      in caplog.text
  # Host shards still compose to the global batch.
  single = _take(pipeline.train_iterator(_cfg(dedup=mode), 6, seed=0), 20)
  hosts = [_take(pipeline.train_iterator(_cfg(dedup=mode), 6, 0, p, 2), 20) for p in range(2)]
  for s in range(20):
    np.testing.assert_array_equal(
        np.concatenate([h[s]['label'] for h in hosts]), single[s]['label'])


def test_keep_mask_is_cached_on_disk(monkeypatch, cache_dir):
  images, labels = _planted()
  keep, exact, near = pipeline.dedup_keep_mask(_cfg(dedup='near'), 'train', images)
  assert (exact, near) == (3, 1) and keep.sum() == 36
  assert len(os.listdir(cache_dir / 'genlab_dedup')) == 1

  def boom(*a):
    raise AssertionError('recomputed')
  monkeypatch.setattr(pipeline, '_compute_keep', boom)
  keep2, exact2, near2 = pipeline.dedup_keep_mask(_cfg(dedup='near'), 'train', images)
  np.testing.assert_array_equal(keep, keep2)
  assert (exact2, near2) == (3, 1)
  # Other data, mode or threshold: another key.
  with pytest.raises(AssertionError, match='recomputed'):
    pipeline.dedup_keep_mask(_cfg(dedup='near', dedup_rms=0.05), 'train', images)
  with pytest.raises(AssertionError, match='recomputed'):
    pipeline.dedup_keep_mask(_cfg(dedup='near'), 'train', images[:39])


def test_streamed_split_is_rejected(data_dir, monkeypatch):
  monkeypatch.setattr(specs, 'MAX_IN_MEMORY_BYTES', 0)
  with pytest.raises(ValueError, match=r"config.data.dedup='exact' needs the train split in memory"):
    pipeline.train_iterator(_cfg(data_dir, 'exact'), 32, seed=0)


def test_eval_is_untouched(monkeypatch):
  images, labels = _planted()
  monkeypatch.setattr(datasets, 'reader',
                      lambda cfg, split, train=False: readers.Reader(None, (images, labels)))
  monkeypatch.setattr(datasets, 'info', lambda cfg: datasets.DatasetInfo((8, 8, 1), 10, 40, 40))
  b = next(pipeline.eval_batches(_cfg(dedup='near'), 40))
  np.testing.assert_array_equal(b['label'], labels)


@pytest.mark.parametrize('field,value', [('dedup', 'fuzzy'), ('dedup', ''), ('dedup_rms', 0.0),
                                         ('dedup_rms', -0.1), ('dedup_rms', float('nan'))])
def test_validate_rejects_bad_dedup(field, value):
  c = _cfg()
  c[field] = value
  with pytest.raises(configs.ConfigError) as e:
    datasets.validate(c)
  msg = str(e.value)
  assert msg.startswith(f'config.data.{field}=') and '\n' not in msg, msg


def test_validate_accepts_dedup_modes():
  for mode in ('none', 'exact', 'near'):
    datasets.validate(_cfg(dedup=mode, dedup_rms=0.5))
