"""Malformed configs: each gives one clear error naming the field, before anything compiles."""

import pytest

from research import configs
from research.data import catalog
from tests import helpers


def _mutate(path, value):
  def f(c):
    section, _, key = path.rpartition('.')
    node = c
    for part in filter(None, section.split('.')):
      node = node[part]
    with node.unlocked() if hasattr(node, 'unlocked') else _null():
      node[key] = value
  return f


class _null:
  def __enter__(self):
    return self

  def __exit__(self, *a):
    return False


BAD = [
    # (mutation, field named in the error, words the message must contain)
    (_mutate('optimizer.lr', -0.1), 'optimizer.lr', '> 0'),
    (_mutate('train.batch_size', 33), 'train.batch_size', 'divide'),
    (_mutate('data.name', 'imagenet64'), 'data.name', 'unknown dataset'),
    (_mutate('optimizer.name', 'adamax2'), 'optimizer.name', 'one of'),
    (_mutate('optimizer.schedule.name', 'triangle'), 'optimizer.schedule.name', 'one of'),
    (_mutate('optimizer.schedule.warmup_steps', 10_000), 'optimizer.schedule.warmup_steps', ''),
    (_mutate('family', 'flow'), 'family', 'unknown family'),
    (_mutate('optimizer.ema_decay', 1.5), 'optimizer.ema_decay', ''),
    (_mutate('eval.best_mode', 'median'), 'eval.best_mode', 'one of'),
    (_mutate('train.num_steps', 0), 'train.num_steps', '> 0'),
    (_mutate('data.augment.binarize', 'stochastic'), 'data.augment.binarize', ''),
    (_mutate('data.augment.crop_pad', -2), 'data.augment.crop_pad', ''),
    (_mutate('optimizer.schedule.boundaries', '10,x'), 'optimizer.schedule', ''),
    (_mutate('init_from.workdir', '/nonexistent/run'), 'init_from.workdir', 'no such directory'),
]


@pytest.mark.parametrize('mutate,field,words', BAD, ids=[b[1] + '-' + str(i)
                                                          for i, b in enumerate(BAD)])
def test_bad_value_names_the_field(mutate, field, words):
  c = helpers.load_config('vae_digits')
  c.unlock()
  mutate(c)
  with pytest.raises(configs.ConfigError) as e:
    configs.validate(c, num_devices=2)
  msg = str(e.value)
  assert f'config.{field}' in msg and words in msg and '\n' not in msg, msg


def test_unknown_key_in_a_config_file():
  c = helpers.load_config('vae_digits')
  c.unlock()
  c.optimizer.lrr = 0.1
  with pytest.raises(configs.ConfigError, match=r'config\.optimizer\.lrr: unknown field'):
    configs.validate(c, num_devices=1)


def test_wrong_type_in_a_config_file():
  c = helpers.load_config('vae_digits')
  c.unlock()
  del c.train['num_steps']
  c.train.num_steps = '100'
  with pytest.raises(configs.ConfigError, match=r'config\.train\.num_steps=.*must be int'):
    configs.validate(c, num_devices=1)


def test_missing_data_package(monkeypatch):
  c = helpers.load_config('vae_fashion_mnist')
  monkeypatch.setattr(catalog, 'FASHION_MNIST_DIR', '/nonexistent/fashion-mnist')
  with pytest.raises(configs.ConfigError, match='apt-get install dataset-fashion-mnist'):
    configs.validate(c, num_devices=1)


@pytest.mark.parametrize('override,expect', [
    ('--config.optimizer.lrr=0.1', 'lrr'),
    ('--config.train.batch_size=abc', 'batch_size'),
    ('--config.optimizer.lr=-1.0', 'config.optimizer.lr=-1.0: must be > 0'),
    ('--config.train.batch_size=33', 'config.train.batch_size=33'),
])
def test_cli_rejects_before_touching_workdir(tmp_path, override, expect):
  workdir = tmp_path / 'run'
  proc = helpers.cli(['--config=experiments/vae_digits/config.py', f'--workdir={workdir}',
                      '--cpu_devices=2', override], check=False, timeout=120)
  assert proc.returncode != 0
  assert expect in proc.stderr, proc.stderr[-2000:]
  assert not workdir.exists()
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
