"""The datasets made of a corpus's dialogue: (speech, reply) pairs for supervised fine-tuning
(kind 'dialogue') and their prompts for PPO rollouts (kind 'prompts'). The pairs come from the
plays (research/data/plays.py `dialogue_pairs`); the tokenizer is the corpus's
(research/data/corpus.py).

Supervised fine-tuning data (kind 'dialogue': 'shakespeare_dialogue'): the same plays and
the same held-out split by play as 'shakespeare', and the same tokenizer as a model pretrained on
it: a dialogue dataset's tokenizer is the one of its corpus ('shakespeare') fit on the corpus's
'train' split (`DIALOGUE_TOKENIZER_SPLIT`), whatever data.train_split says, so a checkpoint of
`experiments/lm_shakespeare_char` has the same vocabulary (the same cache directory, too).
`tokenizer_mismatch` compares two data configs' tokenizers without building them. One example
per (prompt, response) pair of `dialogue_pairs`, over the split's plays in name order and each
play's pairs in play order (`pairs`), formatted as one sequence of L + 1 tokens (`encode_pair`):

  BOS  encode(prompt + '\n\n')  encode(response)  EOS  pad ... pad

The blank line (`SEPARATOR`) never occurs inside a speech, so it marks the turn; the prompt side
ends with it and the model learns to answer after it (prompt a fine-tuned model with
config.prompt = 'a speech\n\n'). encode(prompt + '\n\n') + encode(response) is the encoding
of the joined text for every tokenizer kind ('\n' is a piece of its own in BPE). `loss_mask`
[L] is 1 exactly on the targets that are response tokens or its EOS (the response-only loss),
0 on the prompt, the separator and the padding. Long pairs are truncated, never dropped: the
response keeps its start and the prompt its end (the words next to the reply). The prompt side
keeps all its tokens if they fit next to the whole response, else its last
max(L - response tokens, L // 2) tokens (at least half the window when the response is long);
the response then keeps the first tokens that fit and loses its EOS when cut (a cut reply is
not taught to stop). `pair_stats(data_cfg, split)` counts the truncated pairs; at L = 128 with
the char tokenizer 37% of the pairs fit whole, at L = 256 66%.

Batches come from the same pipeline (a `PairReader` whose rows are the pair sequences; its
`row_entries` give the mask, so shuffling, host sharding, exact resume and eval padding are the
pipeline's, as for the windows):
  train: {'tokens': int32 [B_host, L + 1], 'loss_mask': float32 [B_host, L]}
  eval:  the same plus 'mask' float32 [B_host] (padding examples have loss_mask 0)
`info(data_cfg)` counts pairs (num_eval_examples caps the eval pairs), so the LM's held-out
bits/token and bits/char are over the response tokens and characters only.

RLHF data. Both datasets are derived from the corpus 'shakespeare' like the dialogue dataset
(`catalog.Entry.corpus`): the same tokenizer (the corpus's, fit on its 'train'
split; `tokenizer_mismatch` against an lm_shakespeare_char run is None), so the policy, the
reward model and the reference model all read the pretrained vocabulary.

Prompts (kind 'prompts': 'shakespeare_prompts'), for PPO rollouts: the same plays and the
same held-out split by play; example i is the prompt side of pair i of `pairs(data_cfg, split)`
(`prompt_texts` gives the strings), one int32 row of L = data.seq_len tokens (`encode_prompt`):

  pad ... pad  BOS  (the last L - 1 tokens of) encode(prompt + '\n\n')

left-padded, the real tokens right-aligned (as research/lm/generate.pad_prompts does), so a
policy continues every row after the separator; PAD never occurs in real text, so the prompt
mask is tokens != PAD. A long prompt keeps its end (the words next to the reply).
  train: {'tokens': int32 [B_host, L]}     eval: the same plus 'mask' float32 [B_host]
`info(data_cfg)` counts prompts, of shape (L,).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from research.data import catalog
from research.data import corpus
from research.data import plays
from research.data import readers
from research.data import tokenizers

SEPARATOR = '\n\n'                  # ends the prompt side; never occurs inside a speech


def pairs(data_cfg, split: str) -> list[tuple[str, str]]:
  """The (prompt, response) pairs of `split`: `dialogue_pairs` of its plays, in name order (row i
  of the split's `PairReader` is pair i)."""
  return [p for _, t in corpus.documents(data_cfg, split) for p in plays.dialogue_pairs(t)]


class EncodedPair(NamedTuple):
  tokens: np.ndarray      # int32 [seq_len + 1]: BOS prompt SEPARATOR response EOS pad ...
  loss_mask: np.ndarray   # float32 [seq_len]: 1 on the targets that are response tokens / EOS
  prompt_cut: int         # tokens dropped from the start of the prompt side
  response_cut: int       # tokens dropped from the end of the response side (EOS included)


def pack(ctx: np.ndarray, keep_ctx: int, resp: np.ndarray, seq_len: int):
  """BOS, the last keep_ctx tokens of `ctx`, then the first tokens of `resp` that fit in
  seq_len + 1: (tokens [seq_len + 1], loss mask [seq_len] on the response targets, response
  tokens cut)."""
  keep = min(len(resp), seq_len - keep_ctx)
  tokens = np.full(seq_len + 1, tokenizers.PAD, np.int32)
  tokens[0] = tokenizers.BOS
  tokens[1:1 + keep_ctx] = ctx[len(ctx) - keep_ctx:]
  tokens[1 + keep_ctx:1 + keep_ctx + keep] = resp[:keep]
  loss_mask = np.zeros(seq_len, np.float32)
  loss_mask[keep_ctx:keep_ctx + keep] = 1.0            # target t is tokens[t + 1]
  return tokens, loss_mask, len(resp) - keep


def prompt_keep(ctx_len: int, resp_len: int, seq_len: int) -> int:
  """Prompt tokens kept next to a response of resp_len: all if they fit, else the last
  max(seq_len - resp_len, seq_len // 2) (seq_len positions follow BOS)."""
  return min(ctx_len, max(seq_len - resp_len, seq_len // 2))


def encode_pair(tok: tokenizers.Tokenizer, prompt: str, response: str,
                seq_len: int) -> EncodedPair:
  """One sequence of seq_len + 1 tokens and its response-only loss mask (the format and the
  truncation rule are in the module docstring)."""
  ctx = tok.encode_array(prompt + SEPARATOR)
  resp = np.append(tok.encode_array(response), tokenizers.EOS).astype(np.int32)
  keep_ctx = prompt_keep(len(ctx), len(resp), seq_len)
  tokens, loss_mask, cut = pack(ctx, keep_ctx, resp, seq_len)
  return EncodedPair(tokens, loss_mask, len(ctx) - keep_ctx, cut)


class PairReader(readers.TokenArrayReader):
  """The pairs of a dialogue split: sequences [n, seq_len + 1] and the response-only
  'loss_mask' [n, seq_len] as a row entry."""

  def __init__(self, tokens: np.ndarray, loss_mask: np.ndarray):
    super().__init__(tokens, {'loss_mask': loss_mask})
    self.seq_len = tokens.shape[1] - 1


@functools.lru_cache(maxsize=8)
def _encoded_pairs(tok_key: tuple, split: str, seq_len: int) -> tuple:
  """(tokens [N, L + 1], loss_mask [N, L], cuts [N, 2] = (prompt_cut, response_cut)), read-only."""
  tok = corpus.cached_tokenizer(tok_key)
  enc = [encode_pair(tok, p, r, seq_len)
         for _, t in corpus.key_documents(tok_key, split) for p, r in plays.dialogue_pairs(t)]
  tokens = np.zeros((len(enc), seq_len + 1), np.int32)
  loss_mask = np.zeros((len(enc), seq_len), np.float32)
  cuts = np.zeros((len(enc), 2), np.int64)
  for i, e in enumerate(enc):
    tokens[i], loss_mask[i], cuts[i] = e.tokens, e.loss_mask, (e.prompt_cut, e.response_cut)
  for a in (tokens, loss_mask, cuts):
    a.setflags(write=False)
  return tokens, loss_mask, cuts


@functools.lru_cache(maxsize=8)
def _cached_pair_reader(tok_key: tuple, split: str, seq_len: int) -> PairReader:
  tokens, loss_mask, _ = _encoded_pairs(tok_key, split, seq_len)
  return PairReader(tokens, loss_mask)


def pair_stats(data_cfg, split: str) -> dict:
  """A dialogue split's pairs, how many were truncated on the prompt side and on the response
  side, and the response tokens (targets) the loss counts."""
  if catalog.DATASETS[data_cfg.name].kind != 'dialogue':
    raise ValueError(f'pair_stats: {data_cfg.name!r} is not a dialogue dataset; use one of '
                     f'{catalog.names_of("dialogue")}')
  _, loss_mask, cuts = _encoded_pairs(corpus.tokenizer_key(data_cfg), split,
                                      int(data_cfg.seq_len))
  return {'pairs': len(loss_mask), 'prompt_truncated': int((cuts[:, 0] > 0).sum()),
          'response_truncated': int((cuts[:, 1] > 0).sum()),
          'response_tokens': int(loss_mask.sum())}


# ---------------------------------------------------------------------------------------------
# Prompts for PPO rollouts (see the module docstring)


def prompt_texts(data_cfg, split: str) -> list[str]:
  """The prompts of `split`: the prompt side of `pairs(data_cfg, split)` (row i of the split's
  `PromptReader` encodes prompt_texts(...)[i])."""
  return [p for p, _ in pairs(data_cfg, split)]


def encode_prompt(tok: tokenizers.Tokenizer, prompt: str, seq_len: int) -> np.ndarray:
  """int32 [seq_len]: BOS and the last seq_len - 1 tokens of encode(prompt + SEPARATOR) (all of
  them when they fit), left-padded with PAD."""
  ctx = tok.encode_array(prompt + SEPARATOR)
  keep = min(len(ctx), seq_len - 1)
  row = np.full(seq_len, tokenizers.PAD, np.int32)
  row[seq_len - keep - 1] = tokenizers.BOS
  row[seq_len - keep:] = ctx[len(ctx) - keep:]
  return row


class PromptReader(readers.TokenArrayReader):
  """The left-padded prompts [n, seq_len] of a split. No loss mask (the prompt mask is
  tokens != PAD)."""

  def __init__(self, tokens: np.ndarray):
    super().__init__(tokens)
    self.seq_len = tokens.shape[1]


@functools.lru_cache(maxsize=8)
def _cached_prompt_reader(tok_key: tuple, split: str, seq_len: int) -> PromptReader:
  tok = corpus.cached_tokenizer(tok_key)
  prompts = [p for _, t in corpus.key_documents(tok_key, split)
             for p, _ in plays.dialogue_pairs(t)]
  tokens = np.zeros((len(prompts), seq_len), np.int32)
  for i, p in enumerate(prompts):
    tokens[i] = encode_prompt(tok, p, seq_len)
  tokens.setflags(write=False)
  return PromptReader(tokens)


# ---------------------------------------------------------------------------------------------
# Specs


class DialogueSpec(corpus.TextSpec):
  """(prompt, response) pairs of a corpus's plays for supervised fine-tuning: every pair for
  train and eval alike; batches add the response-only 'loss_mask'."""
  kind = 'dialogue'

  def reader(self, data_cfg, split: str, train: bool = False) -> PairReader:
    del train
    return _cached_pair_reader(corpus.tokenizer_key(data_cfg), split, int(data_cfg.seq_len))


class PromptSpec(corpus.TextSpec):
  """The prompt side of those pairs, left-padded rows of seq_len tokens, for PPO rollouts."""
  kind = 'prompts'

  def row_shape(self, seq_len: int) -> tuple[int, ...]:
    return (seq_len,)

  def reader(self, data_cfg, split: str, train: bool = False) -> PromptReader:
    del train
    return _cached_prompt_reader(corpus.tokenizer_key(data_cfg), split, int(data_cfg.seq_len))


DIALOGUE, PROMPTS = DialogueSpec(), PromptSpec()
