"""Every experiment config loads and validates as shipped (cloud-only ones: the one-line error
that names what to install; RLHF ones, whose defaults point at the runs of the pipeline before
them: the one-line error that names the missing run, and with those stubbed they validate)."""
import os

import pytest

from research import configs
from tests.helpers import ROOT, load_config

NAMES = sorted(d for d in os.listdir(os.path.join(ROOT, 'experiments'))
               if os.path.isfile(os.path.join(ROOT, 'experiments', d, 'config.py')))


# Fields naming the output of an earlier pipeline step, and a stub that validates without it.
PREREQUISITES = {
    'init_from.workdir': lambda c, tmp: c.init_from.update(workdir=''),
    'data.records': lambda c, tmp: c.data.update(records=_empty_file(tmp)),
    'rlhf.reward_workdir': lambda c, tmp: c.rlhf.update(reward='token', reward_token=5,
                                                        reward_workdir=''),
}


def _empty_file(tmp):
  path = os.path.join(tmp, 'store.sqlite')
  open(path, 'a').close()
  return path


def _validate_with_prerequisites(config, tmp):
  """Validates; each one-line error about a missing prerequisite run must name a path that
  does not exist, and is stubbed before validating again."""
  seen = set()
  for _ in range(len(PREREQUISITES) + 1):
    try:
      configs.validate(config, num_devices=1)
      configs.validate(config, num_devices=2)
      return seen
    except configs.ConfigError as e:
      field = next((f for f in PREREQUISITES if str(e).startswith(f'config.{f}=')), None)
      assert field and field not in seen, str(e)
      value = config
      for part in field.split('.'):
        value = value[part]
      assert value and not os.path.exists(value), str(e)
      seen.add(field)
      PREREQUISITES[field](config, tmp)
  raise AssertionError(f'still invalid after stubbing {seen}')


# Named variants (`config.py:ARG`) that README commands use.
VARIANTS = [('ddpm_fashion_mnist', 'cpu'), ('vdm_fashion_mnist', 'cpu'),
            ('diffusion_toy2d', 'grid25'), ('diffusion_toy2d', 'swiss_roll')]


@pytest.mark.parametrize('name,args', [(n, ()) for n in NAMES] +
                         [(n, (a,)) for n, a in VARIANTS])
def test_experiment_config_validates(name, args, tmp_path):
  config = load_config(name, *args)
  assert config.family in configs.FAMILIES
  if config.data.source == 'tfds':
    try:
      import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      with pytest.raises(configs.ConfigError, match='data.source.*pip install'):
        configs.validate(config, num_devices=1)
      return
  missing = _validate_with_prerequisites(config, str(tmp_path))
  assert not missing or config.family in ('reward_model', 'ppo', 'dpo'), missing


def test_an_unknown_variant_names_the_choices():
  with pytest.raises(ValueError, match="unknown variant 'tiny'.*:cpu"):
    load_config('ddpm_fashion_mnist', 'tiny')
