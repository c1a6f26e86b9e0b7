"""Class coverage and label bias of generated images through a classifier's predicted labels.

The label histogram of generated samples is compared with the data's (the "number of modes"
and KL-to-data measures of e.g. Che et al., 2017 "Mode Regularized GANs", and Metz et al., 2017
"Unrolled GANs" on stacked MNIST). The same numbers serve as the bias measure: how far the
generated label distribution drifts from the data's.
"""
from __future__ import annotations

import numpy as np

DEFAULT_EPS = 1e-6


def _labels_histogram(name: str, labels, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'{name} must be a 1-D array of labels, got shape {labels.shape}')
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    if not np.all(labels == np.round(labels)):
      raise ValueError(f'{name} must hold integer class labels')
    labels = labels.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{name} must lie in [0, {num_classes}), got range '
                     f'[{labels.min()}, {labels.max()}]')
  return np.bincount(labels.astype(np.int64), minlength=num_classes)


def label_histogram_stats(fake_labels, data_labels=None, num_classes: int | None = None, *,
                          data_histogram=None, eps: float = DEFAULT_EPS,
                          underrepresented_ratio: float = 0.1) -> dict:
  """Compares the predicted-label histogram of generated samples with the data's.

  Args:
    fake_labels: [M] integer labels predicted for generated samples.
    data_labels: [N] integer labels of the data, or None when `data_histogram` is given.
    num_classes: number of classes K (required).
    data_histogram: [K] non-negative counts or probabilities of the data's labels
      (exclusive with `data_labels`).
    eps: smoothing for the KL only: both normalised histograms get `eps` added to every
      class and are renormalised, p' = (p + eps) / (1 + K eps), so classes that the fake
      samples hit but the data never has give a large finite KL instead of inf.

  Returns dict with:
    kl: KL(fake || data) = sum_k p'_k log(p'_k / q'_k) on the smoothed histograms (nats).
    total_variation: 0.5 * sum_k |p_k - q_k| on the unsmoothed normalised histograms.
    classes_missing: how many classes have data mass > 0 but no generated sample.
    missing_classes: those classes, by index.
    underrepresented_classes: classes whose share among the generated labels is below
      `underrepresented_ratio` (default 0.1) times their share in the data. This names dropped
      classes even when an imperfect classifier labels a few stray samples with them.
    fake_histogram: list[int], counts of generated labels per class.
    data_histogram: list[float], the data's per-class counts (or the histogram as given).
  """
  if num_classes is None or int(num_classes) < 1:
    raise ValueError(f'num_classes must be a positive integer, got {num_classes}')
  k = int(num_classes)
  if (data_labels is None) == (data_histogram is None):
    raise ValueError('give exactly one of data_labels and data_histogram')
  fake = _labels_histogram('fake_labels', fake_labels, k)
  if fake.sum() == 0:
    raise ValueError('fake_labels is empty')
  if data_labels is not None:
    data = _labels_histogram('data_labels', data_labels, k).astype(np.float64)
  else:
    data = np.asarray(data_histogram, np.float64)
    if data.shape != (k,):
      raise ValueError(f'data_histogram must have shape [{k}], got {data.shape}')
    if np.any(data < 0) or not np.all(np.isfinite(data)):
      raise ValueError('data_histogram must be finite and non-negative')
  if data.sum() <= 0:
    raise ValueError('the data histogram is empty')
  p = fake / fake.sum()
  q = data / data.sum()
  ps = (p + eps) / (1.0 + k * eps)
  qs = (q + eps) / (1.0 + k * eps)
  return dict(kl=float(np.sum(ps * np.log(ps / qs))),
              total_variation=float(0.5 * np.abs(p - q).sum()),
              classes_missing=int(np.sum((q > 0) & (fake == 0))),
              missing_classes=[int(c) for c in np.flatnonzero((q > 0) & (fake == 0))],
              underrepresented_classes=[
                  int(c) for c in np.flatnonzero((q > 0) & (p < underrepresented_ratio * q))],
              fake_histogram=[int(c) for c in fake],
              data_histogram=[float(c) for c in data])
