"""Every experiment config loads and validates as shipped (cloud-only ones: the one-line error
that names what to install)."""
import os

import pytest

from research import configs
from tests.helpers import ROOT, load_config

NAMES = sorted(d for d in os.listdir(os.path.join(ROOT, 'experiments'))
               if os.path.isfile(os.path.join(ROOT, 'experiments', d, 'config.py')))


@pytest.mark.parametrize('name', NAMES)
def test_experiment_config_validates(name):
  config = load_config(name)
  assert config.family in configs.FAMILIES
  if config.data.source == 'tfds':
    try:
      import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      with pytest.raises(configs.ConfigError, match='data.source.*pip install'):
        configs.validate(config, num_devices=1)
      return
  configs.validate(config, num_devices=1)
  configs.validate(config, num_devices=2)
