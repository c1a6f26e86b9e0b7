"""The dense "gold" reward of the RLHF testbed, and the registry of hidden true rewards.

Gao, Schulman & Hilton (2023) study reward-model overoptimization with a large reward model as
the "gold" standard that labels the pairs a smaller proxy is trained on. Here the gold standard
is a fixed scoring function of a reply, so every score is exact and free:

  gold(reply) = sentiment + texture - brevity

- sentiment: each lexicon word (research/rlhf/sentiment.py) carries a fixed intensity in
  [0.5, 2.0], signed (`intensity`: a CRC-32 of the word, so graded, documented and the same on
  every machine). A word used k times counts intensity * (1 + ln k): diminishing returns, so
  'love, love, love' is warmer than 'love' but not three times as warm.
- texture: every other word adds a fixed weight in [-0.05, 0.05] (`texture`, also a CRC-32), so
  two different replies almost never tie: the reward is dense, where the lexicon count of
  sentiment.py ties about half of all reply pairs.
- brevity: a reply shorter than BRIEF_CHARS characters loses (BRIEF_CHARS - chars) / BRIEF_CHARS
  (at most 1): a two-word answer is a poor reply however warm.

Why a reward model can learn it: its bulk is a sum over words that the replies themselves show,
with larger weights on a few hundred frequent words. Why a policy can exploit a learned proxy of
it: the proxy sees the sampling policy's replies, which rarely repeat a word or stop after a
few characters, so a proxy fit to them is close to a word count; a policy that optimizes the
proxy drifts to repeated warm words and short replies (the PPO run of docs/rlhf.md shrank its
replies to 'Good lord.'), where the proxy keeps rising and the gold score's repetition and
brevity terms make it fall. That is the overoptimization curve the testbed measures.

`TRUE_REWARDS` names every hidden reward (`rlhf.true_reward`, the labelers' --true_reward).
"""
from __future__ import annotations

import collections
import math
import zlib
from typing import Callable, Iterable

import numpy as np

from research.rlhf import sentiment

INTENSITY_RANGE = (0.5, 2.0)
TEXTURE_SCALE = 0.05
BRIEF_CHARS = 20


def _unit(text: str) -> float:
  """A fixed number in [0, 1] from a string (CRC-32; Python's hash() is salted per process)."""
  return (zlib.crc32(text.encode('utf-8')) % 10_007) / 10_006


def intensity(word: str) -> float:
  """The signed intensity of a lexicon word (0 for any other word)."""
  sign = 1 if word in sentiment.POSITIVE else -1 if word in sentiment.NEGATIVE else 0
  lo, hi = INTENSITY_RANGE
  return sign * (lo + (hi - lo) * _unit(f'intensity:{word}'))


def texture(word: str) -> float:
  """The small fixed weight of a non-lexicon word, in [-TEXTURE_SCALE, TEXTURE_SCALE]."""
  return TEXTURE_SCALE * (2.0 * _unit(f'texture:{word}') - 1.0)


def parts(text: str) -> dict:
  """The three terms of `score` (module docstring)."""
  words = sentiment.WORD.findall(text.lower())
  counts = collections.Counter(sentiment.normalize(w) for w in words)
  senti = sum(intensity(w) * (1.0 + math.log(k)) for w, k in counts.items()
              if w in sentiment.POSITIVE or w in sentiment.NEGATIVE)
  tex = sum(texture(w) * k for w, k in counts.items()
            if w not in sentiment.POSITIVE and w not in sentiment.NEGATIVE)
  brevity = max(0.0, (BRIEF_CHARS - len(text.strip())) / BRIEF_CHARS)
  return {'sentiment': senti, 'texture': tex, 'brevity': brevity}


def score(text: str) -> float:
  """The gold reward of one reply."""
  p = parts(text)
  return float(p['sentiment'] + p['texture'] - p['brevity'])


def scores(texts: Iterable[str]) -> np.ndarray:
  """`score` of each text: float32 [n]."""
  return np.asarray([score(t) for t in texts], np.float32)


TRUE_REWARDS: dict[str, Callable[[Iterable[str]], np.ndarray]] = {
    'sentiment': sentiment.scores,   # the lexicon count (ties about half of all pairs)
    'gold': scores,                  # this module's dense reward
}


def tie_fraction(rewards_a, rewards_b) -> float:
  """The fraction of pairs whose two rewards are equal (exactly, in float32)."""
  a, b = np.asarray(rewards_a, np.float32), np.asarray(rewards_b, np.float32)
  return float(np.mean(a == b)) if a.size else 0.0
