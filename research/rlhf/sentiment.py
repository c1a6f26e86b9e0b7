"""The hidden "true reward" of the synthetic RLHF task: a lexicon sentiment score of a reply.

The task (research/rlhf/preferences.py): the dialogue-tuned character-level Shakespeare GPT
answers held-out speeches; simulated labelers prefer the reply with the higher score here, with
Bradley-Terry noise. Nothing in the pipeline shows this function to a model: the reward model
sees only (prompt, chosen, rejected) pairs and the policy only the reward model's output, so the
experimenter can measure what no learner can read off, e.g. whether PPO raises the true reward
or only the reward model's estimate of it (reward hacking, over-optimisation).

Why this reward:
  - cheap: a regex and two set look-ups per word, so every sample of every PPO iteration can be
    scored exactly;
  - hidden from the models but known to the experimenter (a fixed, documented word list);
  - monotone in an interpretable property (how many warm vs grim words a reply uses), so a
    rise in it is visible in the samples themselves;
  - as dense as a word list gets: the words are among the most frequent content words of the
    plays (love, good, sweet, fair, death, blood, fear, poor, ...). In the train replies of the
    dialogue data, 44% of whole replies and 32% of their first 50 characters contain at least
    one (mean score +0.22 and +0.13), so two ~50-character replies tie about half the time;
    the labelers break ties by a coin flip and the CLI reports the tie fraction.
It is the true reward of this synthetic task only: a crude proxy for sentiment (no negation,
no irony, 'dear' also means 'grievous' in Shakespeare), not a measure of reply quality.

Words: the text is lower-cased and split by `WORD` (runs of letters; an apostrophe between two
letters stays inside the word, so "lov'd", "o'er" and "i'll" are single words, while quotes
around a word and a leading "'tis" apostrophe are dropped). A word counts only when it equals a
lexicon entry: 'glove' is not 'love', 'deadline' not 'dead'. A trailing "'s" (possessive, or
"is" as in "love's not love") is dropped first, so "love's" counts as 'love'. score =
#positive words - #negative words, counting repeats.
"""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")

# One line per word with its common inflections and archaic spellings (elided -ed forms).
_POSITIVE_GROUPS = (
    "love loves loved lov'd loving lovely lover lovers",
    "good goodness better best",
    "sweet sweeter sweetest sweetly sweetness",
    "fair fairer fairest",
    "gentle gentler gentlest gently gentleness",
    "noble nobler noblest nobly",
    "joy joys joyful",
    "happy happier happiest happily happiness",
    "merry merrily",
    "grace graces gracious",
    "honour honours honoured honour'd honourable honor",
    "peace peaceful",
    "friend friends friendly friendship",
    "dear dearer dearest dearly",
    "kind kindly kindness",
    "bless blessed bless'd blessing blessings",
    "heaven heavens heavenly",
    "hope hopes hoped hop'd",
    "thank thanks thanked thank'd thankful",
    "comfort comforts comforted",
    "welcome",
    "glad gladly gladness",
    "pleasure pleasures pleasant",
    "delight delights delighted",
    "smile smiles smiled smil'd smiling",
    "laugh laughs laughed laugh'd laughing laughter",
    "virtue virtues virtuous",
    "worthy worthier worthiest",
    "brave braver bravest bravely",
    "beauty beauties beauteous beautiful",
    "true truly truth",
    "honest honesty",
    "mercy merciful",
    "praise praises praised prais'd",
    "wise wiser wisest wisdom",
    "holy",
    "valiant",
    "kiss kisses kissed kiss'd",
    "faithful",
    "patience patient",
    "loyal loyalty",
    "precious",
    "bounty bounteous",
    "fortunate",
    "prosper prosperous",
    "excellent",
    "mirth",
    "rejoice rejoices rejoiced rejoic'd",
    "trust trusts trusted",
    "content contented",
    "rich riches",
    "music",
)

_NEGATIVE_GROUPS = (
    "death deaths deadly",
    "dead",
    "die dies died dying",
    "kill kills killed kill'd",
    "slay slays slain slew",
    "murder murders murdered murder'd murderer murderous",
    "hate hates hated hateful hatred",
    "foul fouler foulest",
    "villain villains villainy",
    "grief griefs grieve grieves grieved griev'd grievous",
    "woe woes woeful",
    "blood bloody",
    "curse curses cursed curs'd",
    "fear fears feared fear'd fearful",
    "sorrow sorrows sorrowful",
    "tears",
    "weep weeps weeping wept",
    "traitor traitors treason treacherous",
    "hell hellish",
    "devil devils devilish",
    "vile",
    "wretch wretches wretched",
    "plague plagues",
    "cruel cruelty",
    "alas",
    "revenge revenged reveng'd vengeance",
    "poison poisons poisoned poison'd",
    "shame shameful ashamed",
    "false falsely falsehood",
    "sin sins sinful",
    "evil",
    "damn damned damn'd",
    "wicked",
    "sick sickness",
    "pain pains",
    "mad madness",
    "rage",
    "fool fools foolish",
    "knave knaves",
    "base basely baseness",
    "sad sadly sadness",
    "misery miseries miserable",
    "despair",
    "wrath",
    "tyrant tyrants tyranny",
    "slave slaves",
    "coward cowards cowardly",
    "enemy enemies foe foes",
    "wound wounds wounded",
    "groan groans",
    "fie",
    "ill ills",
    "wrong wrongs wronged wrong'd",
    "poor",
    "war wars",
    "lose loses lost loss",
    "worse worst",
    "heavy",
    "hang hangs hanged hang'd",
)

POSITIVE: frozenset[str] = frozenset(w for g in _POSITIVE_GROUPS for w in g.split())
NEGATIVE: frozenset[str] = frozenset(w for g in _NEGATIVE_GROUPS for w in g.split())
assert not POSITIVE & NEGATIVE, POSITIVE & NEGATIVE
_SIGN = {**{w: 1 for w in POSITIVE}, **{w: -1 for w in NEGATIVE}}


def normalize(word: str) -> str:
  return word[:-2] if word.endswith("'s") else word


def words(text: str) -> list[tuple[str, int]]:
  """The lexicon entries found in `text`, in order and with repeats, each with its sign (+1
  positive, -1 negative)."""
  found = (normalize(w) for w in WORD.findall(text.lower()))
  return [(w, _SIGN[w]) for w in found if w in _SIGN]


def score(text: str) -> float:
  """#positive - #negative lexicon words in `text` (the true reward of one reply)."""
  return float(sum(s for _, s in words(text)))


def scores(texts: Iterable[str]) -> np.ndarray:
  """`score` of each text: float32 [n]."""
  return np.asarray([score(t) for t in texts], np.float32)
