"""The RLHF testbed's dense gold reward (research/rlhf/gold.py) and best-of-n's KL
(research/rlhf/best_of_n.py)."""
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from research.data import plays as plays_lib
from research.data.builders import shakespeare
from research.rlhf import best_of_n, gold, overoptimization, preferences, sentiment
from tests import helpers

TEXTS = ['Good my lord, I thank you.', 'O villain, villain, smiling, damned villain!',
         'Ay.', 'My dear, dear love, my sweet and gentle friend.', '']


def test_the_gold_reward_is_the_same_in_another_process():
  code = ('import json; from research.rlhf import gold; '
          f'print(json.dumps([gold.score(t) for t in {TEXTS!r}]))')
  out = subprocess.run([sys.executable, '-c', code], cwd=helpers.ROOT, capture_output=True,
                       text=True, timeout=120, check=True)
  assert json.loads(out.stdout) == [gold.score(t) for t in TEXTS]


def test_terms_do_what_the_docstring_says():
  for w in ('love', 'sweet', 'death', 'villain'):
    i = gold.intensity(w)
    assert gold.INTENSITY_RANGE[0] <= abs(i) <= gold.INTENSITY_RANGE[1]
    assert np.sign(i) == (1 if w in sentiment.POSITIVE else -1)
  assert gold.intensity('table') == 0 and abs(gold.texture('table')) <= gold.TEXTURE_SCALE
  love = gold.parts('I do love thee well, my lord.')['sentiment']
  thrice = gold.parts('I do love, love, love thee well.')['sentiment']
  assert love < thrice < 3 * love                                  # diminishing returns
  assert np.isclose(thrice, love * (1 + np.log(3)))
  assert gold.parts('Good lord.')['brevity'] == pytest.approx((20 - 10) / 20)
  assert gold.parts('a' * 40)['brevity'] == 0
  p = gold.parts(TEXTS[3])
  assert gold.score(TEXTS[3]) == pytest.approx(p['sentiment'] + p['texture'] - p['brevity'])


def test_the_gold_reward_is_dense_on_real_replies():
  """Pairs of real replies (the dialogue data's held-out replies, cut to 50 characters like a
  policy's ~48-token replies): the lexicon count ties about half of them, gold under 5%."""
  plays = shakespeare.load_plays()
  replies = [r[:50] for name in shakespeare.held_out(plays)
             for _, r in plays_lib.dialogue_pairs(plays[name])]
  rng = np.random.default_rng(0)
  a, b = rng.integers(0, len(replies), (2, 3000))
  a, b = a[a != b], b[a != b]
  texts_a, texts_b = [replies[i] for i in a], [replies[i] for i in b]
  lexicon = gold.tie_fraction(sentiment.scores(texts_a), sentiment.scores(texts_b))
  dense = gold.tie_fraction(gold.scores(texts_a), gold.scores(texts_b))
  assert lexicon > 0.3 and dense < 0.05, (lexicon, dense)


def test_labelers_can_compare_by_the_gold_reward():
  recs = preferences.label_pairs(['p'] * 2, TEXTS[:2], TEXTS[2:4], np.random.default_rng(0), 0.0,
                                 'train', true_reward='gold')
  for r in recs:
    m = r['metadata']
    assert m['task'] == 'gold' and m['reward_chosen'] >= m['reward_rejected']
    assert m['reward_chosen'] == pytest.approx(float(gold.scores([r['chosen']])[0]))
  with pytest.raises(ValueError, match='true_reward'):
    preferences.label_pairs(['p'], ['a'], ['b'], np.random.default_rng(0), 0.0, 'train',
                            true_reward='nope')


@pytest.mark.parametrize('n', [1, 2, 4, 16, 64])
def test_best_of_n_kl_formula_matches_the_exact_kl(n):
  """log n - (n - 1)/n against the exact KL of best-of-n over a fine uniform distribution."""
  m = 200_000
  exact = best_of_n.exact_kl(np.full(m, 1.0 / m), n)
  assert exact == pytest.approx(best_of_n.kl(n), abs=2e-3)
  if n == 1:
    assert best_of_n.kl(1) == 0.0


def test_best_of_n_selects_the_highest_score():
  scores = np.array([[0.1, 0.9, 0.3], [2.0, -1.0, 2.0]])
  np.testing.assert_array_equal(best_of_n.select(scores), [1, 0])
  with pytest.raises(ValueError):
    best_of_n.kl(0)


def test_expected_best_is_the_mean_over_random_subsets():
  """The closed-form estimator against brute force: every n-subset of N = 7 samples."""
  rng = np.random.default_rng(1)
  true, proxy = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
  for n in (1, 2, 3, 7):
    got = best_of_n.expected_best(true, proxy, n)
    subsets = [list(c) for c in itertools.combinations(range(7), n)]
    want = [np.mean([t[c][np.argmax(p[c])] for c in subsets]) for t, p in zip(true, proxy)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
  np.testing.assert_allclose(best_of_n.expected_best(true, proxy, 1), true.mean(1))
  with pytest.raises(ValueError):
    best_of_n.expected_best(true, proxy, 8)


@pytest.mark.parametrize('form', overoptimization.FORMS)
def test_gao_fits_recover_planted_coefficients(form):
  kl = np.linspace(0.1, 30, 25)
  params = {'alpha': 0.9, 'beta': 0.2}
  gain = overoptimization.predict(kl, params, form)
  gain = gain + np.random.default_rng(0).normal(scale=1e-3, size=gain.shape)
  got = overoptimization.fit(kl, gain, form)
  assert got['alpha'] == pytest.approx(0.9, abs=1e-2)
  assert got['beta'] == pytest.approx(0.2, abs=1e-2)
  k, g = overoptimization.peak(got, form)
  assert g >= overoptimization.predict(kl, got, form).max() - 1e-6     # the fitted maximum
  assert overoptimization.peak({'alpha': 1.0, 'beta': -0.1}, form) == (np.inf, np.inf)
  assert k > 0
