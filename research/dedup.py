"""Duplicates in the packaged image datasets' splits (research/evaluation/dedup.py):

  python -m research.dedup [names...] [--split=train] [--rms=0.02,0.05] [--limit=N]

prints, per dataset and threshold, the exact and near duplicate counts (near = L2 on [0, 1]
pixels below RMS `--rms` per pixel).
"""
from __future__ import annotations

import time
from typing import Sequence

from absl import app, flags

from research import configs
from research.data import datasets, sources
from research.evaluation import dedup


def _define_flags():
  """Flags exist only when this module is the command (importing it defines none)."""
  flags.DEFINE_string('split', 'train', 'The split to measure (a TFDS split spec).')
  flags.DEFINE_string('data_dir', '', 'Where the package datasets are prepared.')
  flags.DEFINE_list('rms', ['0.02'], 'Near-duplicate RMS thresholds per pixel, comma-separated.')
  flags.DEFINE_integer('limit', 0, 'First N examples only (0 = all).', lower_bound=0)


def main(argv: Sequence[str]) -> None:
  """python -m research.dedup [names...] [--split=train] [--rms=0.02,0.05]."""
  f = flags.FLAGS
  names = list(argv[1:]) or ['digits', 'mnist', 'fashion_mnist']
  try:
    rms_values = [float(r) for r in f.rms]
  except ValueError:
    configs.fail(f'flag error: --rms={",".join(f.rms)}: must be comma-separated numbers')
  for name in names:
    if name not in [n for n in datasets.names_of('image') if datasets.DATASETS[n].package]:
      configs.fail(f'flag error: {name!r} is not a packaged image dataset; use digits, mnist '
                   'or fashion_mnist')
  for name in names:
    images, _ = sources.read_package_split(name, f.data_dir, f.split)
    if f.limit:
      images = images[:f.limit]
    for rms in rms_values:
      t0 = time.time()
      c = dedup.dataset_dedup_counts(images, rms_threshold=rms)
      print(f'{name}/{f.split} shape={images.shape} rms={rms} {c} '
            f'({time.time() - t0:.1f} s)', flush=True)


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=lambda argv: configs.parse_command_flags(argv, required=(),
                                                                       positional=True))
