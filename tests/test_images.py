"""research/images.py: the 2-D scatter plot of generated against real points."""
import numpy as np

from research import images


def test_scatter_places_points_and_counts_outliers():
  real = np.array([[-1.0, -1.0], [1.0, 1.0]])
  fake = np.concatenate([np.zeros((98, 2)), [[50.0, 50.0], [np.nan, 0.0]]])
  img, outside = images.scatter(real, fake, modes=np.array([[1.0, -1.0]]), radius=0.1, size=101)
  assert img.shape == (101, 101, 3) and img.dtype == np.uint8
  assert outside == 2                                 # the far point and the NaN
  center = img[50, 50]
  assert center[2] > 150 and center[0] < 100          # generated points at (0, 0): blue
  assert (img[5:10, 5:10] == 255).all()               # empty corner stays white
  ys, xs = np.nonzero((img[..., 0] > 180) & (img[..., 1] < 80))   # red mode circle
  assert len(xs) and xs.mean() > 70 and ys.mean() > 70   # mode (1, -1): right, bottom (y up)
  ys, xs = np.nonzero(img.sum(-1) == 0)                   # real points: black
  assert len(xs) == 2
