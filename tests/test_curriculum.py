"""research/curriculum.py: curriculum values, validation, and the host batch transforms."""
import math

import numpy as np
import pytest

from research import configs, curriculum


def cur_cfg(**overrides):
  c = configs.common_defaults().curriculum
  for k, v in overrides.items():
    c[k] = v
  return c


def test_none_gives_none():
  assert curriculum.make(cur_cfg()) is None


CASES = [
    (dict(name='linear', start=8.0, end=28.0, steps=100),
     {0: 8.0, 50: 18.0, 100: 28.0, 500: 28.0, -5: 8.0}),
    (dict(name='cosine', start=0.0, end=1.0, steps=100),
     {0: 0.0, 25: (1 - math.cos(math.pi / 4)) / 2, 50: 0.5, 100: 1.0, 200: 1.0}),
    (dict(name='exponential', start=64.0, end=1024.0, steps=400),
     {0: 64.0, 100: 128.0, 200: 256.0, 400: 1024.0, 1000: 1024.0}),
    (dict(name='step', start=1.0, end=2.0, steps=10), {0: 1.0, 9: 1.0, 10: 2.0, 99: 2.0}),
    (dict(name='piecewise', boundaries='1000,3000', levels='8,16,28'),
     {0: 8.0, 999: 8.0, 1000: 16.0, 2999: 16.0, 3000: 28.0, 10**6: 28.0}),
]


@pytest.mark.parametrize('overrides,expected', CASES, ids=[c[0]['name'] for c in CASES])
def test_values(overrides, expected):
  cfg = cur_cfg(**overrides)
  curriculum.validate(cfg)
  fn = curriculum.make(cfg)
  for step, want in expected.items():
    got = fn(step)
    assert isinstance(got, float)
    assert got == pytest.approx(want, abs=1e-9), step


BAD = [
    (dict(name='quadratic'), 'curriculum.name'),
    (dict(name='linear', steps=0), 'curriculum.steps'),
    (dict(name='step', steps=-1), 'curriculum.steps'),
    (dict(name='exponential', steps=10, start=0.0), 'curriculum.start'),
    (dict(name='linear', steps=10, end=float('nan')), 'curriculum.end'),
    (dict(name='piecewise', boundaries='10', levels='1'), 'curriculum.levels'),
    (dict(name='piecewise', boundaries='10,a', levels='1,2,3'), 'curriculum.boundaries'),
    (dict(name='piecewise', boundaries='20,10', levels='1,2,3'), 'curriculum.boundaries'),
    (dict(name='piecewise', boundaries='10', levels='1,b'), 'curriculum.levels'),
]


@pytest.mark.parametrize('overrides,field', BAD, ids=[f'{i}-{b[1]}' for i, b in enumerate(BAD)])
def test_validate_rejects(overrides, field):
  with pytest.raises(configs.ConfigError) as e:
    curriculum.validate(cur_cfg(**overrides))
  assert f'config.{field}=' in str(e.value) and '\n' not in str(e.value)


def test_crop_sequence():
  batch = {'tokens': np.arange(2 * 10).reshape(2, 10), 'mask': np.ones((2, 10)), 'label': [0, 1]}
  out = curriculum.crop_sequence(batch, 4.7)
  assert out['tokens'].shape == (2, 4) and out['mask'].shape == (2, 10)
  np.testing.assert_array_equal(out['tokens'], batch['tokens'][:, :4])
  assert out['label'] is batch['label']
  both = curriculum.crop_sequence(batch, 7, key=('tokens', 'mask'), multiple_of=4)
  assert both['tokens'].shape == (2, 4) and both['mask'].shape == (2, 4)
  assert curriculum.crop_sequence(batch, 50)['tokens'].shape == (2, 10)
  assert curriculum.crop_sequence(batch, 0)['tokens'].shape == (2, 1)
  assert batch['tokens'].shape == (2, 10)   # input untouched


def test_downsample_images_keeps_shape_and_pools():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(3, 28, 28, 1)).astype(np.float32)
  batch = {'image': x, 'label': np.arange(3)}
  out = curriculum.downsample_images(batch, 7)
  y = out['image']
  assert y.shape == x.shape and y.dtype == x.dtype
  # 4x4 blocks, each constant and equal to the block mean
  blocks = y.reshape(3, 7, 4, 7, 4, 1)
  np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :, :1, :, :1], blocks.shape))
  np.testing.assert_allclose(blocks[:, :, 0, :, 0], x.reshape(3, 7, 4, 7, 4, 1).mean((2, 4)),
                             rtol=1e-6)
  np.testing.assert_allclose(y.mean(), x.mean(), rtol=1e-5)
  assert out['label'] is batch['label']


def test_downsample_images_rounds_to_even_divisor():
  x = np.random.default_rng(1).uniform(size=(1, 28, 28, 3)).astype(np.float32)
  y = curriculum.downsample_images({'image': x}, 10)['image']   # factor 2 -> 14x14 detail
  np.testing.assert_allclose(y[:, ::2, ::2], y[:, 1::2, 1::2])
  assert not np.allclose(y[:, ::4, ::4], y[:, 2::4, 2::4])
  same = {'image': x}
  assert curriculum.downsample_images(same, 28) is same
  assert curriculum.downsample_images(same, 100) is same
