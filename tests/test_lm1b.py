"""The lm1b cloud path (experiments/lm_lm1b) on a stand-in for the TFDS source: sentences read
and tokenized one at a time, padding masked out of the loss and the eval, and the config as
shipped validates."""
import numpy as np
import pytest

from research import configs, trainer
from research.data import corpus, datasets, pipeline, sources
from research.data import tokenizers
from tests import helpers

WORDS = 'the a of to and in that is was he for it with as his on be at by had'.split()


class FakeSentences:
  """What `tfds.data_source('lm1b', split=...)` gives: examples {'text': UTF-8 bytes}."""

  def __init__(self, n: int, seed: int):
    rng = np.random.default_rng(seed)
    self._text = [' '.join(rng.choice(WORDS, rng.integers(3, 25))).capitalize() + ' .'
                  for _ in range(n)]

  def __len__(self):
    return len(self._text)

  def __getitem__(self, i):
    return {'text': self._text[i].encode()}


@pytest.fixture
def lm1b(monkeypatch, tmp_path):
  """The shipped config, shrunk, over fake train/test splits (no TensorFlow, no download)."""
  splits = {'train': FakeSentences(600, 0), 'test': FakeSentences(50, 1)}
  opened = []

  def open_source(name, source, data_dir, split):
    assert (name, source) == ('lm1b', 'tfds')
    opened.append(split)
    return splits[split]
  monkeypatch.setattr(sources, 'open_source', open_source)
  monkeypatch.setattr(sources, 'check_installed', lambda data_cfg: None)
  c = helpers.load_config('lm_lm1b')
  c.data.data_dir = str(tmp_path / 'tfds')
  c.data.vocab_size = 300
  c.data.seq_len = 16
  c.model.update(num_layers=1, num_heads=2, d_model=32, mlp_dim=64)
  c.precision.compute = 'float32'
  c.optimizer.schedule.warmup_steps = 2
  c.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, sample_every=4,
                 checkpoint_every=4)
  c.eval.update(batch_size=16, num_samples=2)
  c.sample.max_new_tokens = 5
  return c, splits, opened


def test_shipped_config_is_the_published_setting():
  c = helpers.load_config('lm_lm1b')
  assert (c.data.name, c.data.source, c.data.vocab_size) == ('lm1b', 'tfds', 30_000)
  assert (c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.mlp_dim) == (
      6, 512, 8, 2048)
  assert c.train.batch_size == 256 and c.train.num_steps == 500_000
  assert c.optimizer.lr == pytest.approx(1.58e-3, rel=1e-2)


def test_sentences_are_rows_bos_text_eos_padded(lm1b):
  c, splits, _ = lm1b
  configs.validate(c, 2)
  tok = corpus.tokenizer(c.data)
  read = datasets.reader(c.data, 'test')
  assert isinstance(read, corpus.SentenceReader) and read.num_examples == 50
  rows, _ = read.rows(np.arange(50))
  assert rows.shape == (50, c.data.seq_len + 1)
  for i in range(50):
    ids = tok.encode_array(splits['test'][i]['text'].decode())
    want = np.concatenate([[tokenizers.BOS], ids, [tokenizers.EOS]])[:c.data.seq_len + 1]
    np.testing.assert_array_equal(rows[i, :len(want)], want)
    assert np.all(rows[i, len(want):] == tokenizers.PAD)
  assert (rows == tokenizers.PAD).any() and (rows[:, -1] != tokenizers.PAD).any()  # both kinds
  assert tok.decode(tok.encode_array('the a of')) == 'the a of'


def test_train_and_eval_skip_the_padding(lm1b, tmp_path):
  c, splits, opened = lm1b
  configs.validate(c, 2)
  batches = list(pipeline.eval_batches(c.data, c.eval.batch_size))
  real_targets = sum(float(b['loss_mask'].sum()) for b in batches)
  rows, _ = datasets.reader(c.data, 'test').rows(np.arange(50))
  assert real_targets == float((rows[:, 1:] != tokenizers.PAD).sum())
  out = trainer.train(c, str(tmp_path / 'run'))
  assert out['eval']['num_examples'] == 50
  assert np.isfinite(out['train']['loss']) and np.isfinite(out['eval']['bits_per_token'])
  # Held-out tokens = the real targets only (padding is neither predicted nor counted).
  assert out['eval']['num_tokens'] * 50 == pytest.approx(real_targets)
  assert set(opened) == {'train', 'test'}
