"""RLHF text data: 'shakespeare_prompts' (left-padded PPO prompts) and 'shakespeare_preferences'
(reward model / DPO pairs read from a record store): row format, the shared prompt truncation,
the response-only masks, the split rule, batches, store changes and config errors."""
import hashlib

import numpy as np
import pytest

from research import configs, records
from research.data import corpus, datasets, dialogue, pipeline, preferences
from research.data import tokenizers
from tests.helpers import load_config

L = 32


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('rlhf_data'))


def _config(data_dir, name, **data):
  c = load_config('sft_shakespeare_dialogue')
  c.data.name, c.data.data_dir, c.data.seq_len, c.data.read_threads = name, data_dir, L, 2
  c.data.update(data)
  c.sample.max_new_tokens = 12
  return c


def _hash_split(prompt):
  return 'test' if int(hashlib.sha256(prompt.encode('utf-8')).hexdigest(), 16) % 10 == 0 \
      else 'train'


def _prompts_with_split(split, n, stem):
  """n distinct prompts whose hash puts them in `split`."""
  out, i = [], 0
  while len(out) < n:
    p = f'{stem} {i}, my lord?'
    if _hash_split(p) == split:
      out.append(p)
    i += 1
  return out


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  """A record store with synthetic pairs (with and without metadata split, short and long) and
  a few human ones: (path, the synthetic rows as the store returns them)."""
  path = str(tmp_path_factory.mktemp('rlhf_store') / 'records.db')
  hash_train = _prompts_with_split('train', 4, 'Speak')
  hash_test = _prompts_with_split('test', 3, 'Answer')
  pairs = []
  for i, p in enumerate(hash_train + hash_test):
    pairs.append(dict(prompt=p, chosen=f'Ay, good {i}.', rejected=f'No {i}' * (i % 3 + 1)))
  # The same prompts again (no metadata): they must land in the same split as before.
  pairs.append(dict(prompt=hash_train[0], chosen='Once more, sir.', rejected='Nay.'))
  pairs.append(dict(prompt=hash_test[0], chosen='Once more, madam.', rejected='Hence!'))
  # metadata['split'] wins over the hash, either way.
  pairs.append(dict(prompt=hash_test[1], chosen='Forced to train.', rejected='x',
                    metadata={'split': 'train', 'seed': 3}))
  pairs.append(dict(prompt=hash_train[1], chosen='Forced to test.', rejected='y',
                    metadata={'split': 'test'}))
  pairs.append(dict(prompt=hash_train[2], chosen='Other metadata.', rejected='z',
                    metadata={'note': 'no split here'}))
  # Long ones: the prompt is cut (the same for both sides), responses keep their start.
  long_prompt = 'O, what a rogue and peasant slave am I! ' * 3 + 'THE END'
  pairs.append(dict(prompt=long_prompt, chosen='START ' + 'c' * 40, rejected='Ay.',
                    metadata={'split': 'train'}))
  pairs.append(dict(prompt=long_prompt, chosen='Ay.', rejected='BEGIN ' + 'r' * 50,
                    metadata={'split': 'train'}))
  pairs.append(dict(prompt='Who is there?', chosen='Nay, answer me: ' + 'a' * 30,
                    rejected='Stand.', metadata={'split': 'train'}))
  pairs.append(dict(prompt=long_prompt, chosen='Held-out and long ' * 3, rejected='Short.',
                    metadata={'split': 'test'}))
  with records.RecordStore(path) as s:
    s.add_preferences([dict(p, source='synthetic') for p in pairs])
    s.add_preference(hash_train[3], 'A human choice.', 'Not this.', source='human',
                     labeler_id='alice')
    s.add_preference('Where is the king?', 'Within, my lord.', 'Gone.', source='human',
                     labeler_id='bob', metadata={'split': 'test'})
    rows = s.preferences(source='synthetic')
  return path, rows


def _split_of(row):
  meta = row.get('metadata') or {}
  return meta['split'] if meta.get('split') in ('train', 'test') else _hash_split(row['prompt'])


def _run(mask):
  """Indices of the 1s of a mask, checked to be one contiguous run."""
  on = np.flatnonzero(mask)
  assert len(on) == mask.sum() and np.all(np.diff(on) == 1)
  return on


# ---------------------------------------------------------------------------------------------
# Prompts


def test_prompt_rows_are_left_padded_prompt_ends(data_dir):
  c = _config(data_dir, 'shakespeare_prompts').data
  tok = corpus.tokenizer(c)
  prompts = dialogue.prompt_texts(c, 'test')
  assert prompts == [p for p, _ in dialogue.pairs(c, 'test')] and len(prompts) > 100
  read = datasets.reader(c, 'test')
  assert read.num_examples == len(prompts)
  rows, labels = read.rows(np.arange(len(prompts)))
  assert labels is None and rows.shape == (len(prompts), L) and rows.dtype == np.int32
  sep = tok.encode(dialogue.SEPARATOR)
  cut = whole = 0
  for prompt, row in zip(prompts, rows):
    real = row != tokenizers.PAD
    start = int(np.argmax(real))
    assert real[start:].all() and not real[:start].any()          # left-padded, right-aligned
    assert row[start] == tok.bos_id and tok.bos_id not in row[start + 1:]
    assert list(row[L - len(sep):]) == sep                          # ends with the separator
    ctx = tok.encode(prompt + dialogue.SEPARATOR)
    np.testing.assert_array_equal(row[start + 1:], ctx[-(L - 1 - start):])
    decoded = tok.decode(row)
    assert (prompt + dialogue.SEPARATOR).endswith(decoded)
    if len(ctx) <= L - 1:
      assert decoded == prompt + dialogue.SEPARATOR and start == L - 1 - len(ctx)
      whole += 1
    else:
      assert start == 0 and len(decoded) == L - 1                  # char tokenizer: 1 char each
      cut += 1
  assert cut > 0 and whole > 0
  # The same layout as generate.pad_prompts for the same token lists.
  from research.lm import generate  # pylint: disable=g-import-not-at-top  (imports jax)
  pick = [0, int(np.argmax(rows[:, 0] == tok.bos_id)), int(np.argmax(rows[:, 0] == 0))]
  lists = [[tok.bos_id, *tok.encode(prompts[i] + dialogue.SEPARATOR)[-(L - 1):]] for i in pick]
  padded, mask = generate.pad_prompts(lists)
  np.testing.assert_array_equal(np.asarray(padded), rows[pick])
  np.testing.assert_array_equal(np.asarray(mask), rows[pick] != tokenizers.PAD)
  assert dialogue.encode_prompt(tok, prompts[pick[1]], L).tolist() == rows[pick[1]].tolist()


def test_prompt_batches_and_info(data_dir):
  c = _config(data_dir, 'shakespeare_prompts', num_eval_examples=10).data
  n_train = len(dialogue.prompt_texts(c, 'train'))
  assert datasets.info(c) == datasets.DatasetInfo((L,), 0, n_train, 10, 'tokens')
  train = datasets.reader(c, 'train', train=True)
  all_rows = {r.tobytes() for r in train.rows(np.arange(train.num_examples))[0]}
  batch = next(pipeline.train_iterator(c, 8, seed=0))
  assert set(batch) == {'tokens'} and batch['tokens'].shape == (8, L)
  assert batch['tokens'].dtype == np.int32
  assert all(r.tobytes() in all_rows for r in batch['tokens'])
  batches = list(pipeline.eval_batches(c, 8))
  assert len(batches) == 2 and set(batches[0]) == {'tokens', 'mask'}
  tokens = np.concatenate([b['tokens'] for b in batches])
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(16) < 10)
  np.testing.assert_array_equal(tokens[:10], datasets.reader(c, 'test').rows(np.arange(10))[0])
  assert (tokens[10:] == tokenizers.PAD).all()


def test_rlhf_datasets_use_the_pretraining_tokenizer(data_dir, store):
  pre = load_config('lm_shakespeare_char').data
  pre.data_dir = data_dir
  for name, extra in (('shakespeare_prompts', {}),
                      ('shakespeare_preferences', {'records': store[0]})):
    c = _config(data_dir, name, **extra).data
    c.train_split = 'train' if name == 'shakespeare_preferences' else 'train[:3]'
    assert corpus.tokenizer_mismatch(c, pre) is None, name
    assert corpus.tokenizer_dir(c) == corpus.tokenizer_dir(pre)
    assert corpus.train_text(c) == corpus.train_text(pre)
  other = pre.copy_and_resolve_references()
  other.train_split = 'train[:90%]'
  assert corpus.tokenizer_mismatch(c, other) == ('data.train_split', 'train', 'train[:90%]')


# ---------------------------------------------------------------------------------------------
# Preferences


def test_encode_preference_shares_the_prompt_truncation(data_dir):
  tok = corpus.tokenizer(_config(data_dir, 'shakespeare_prompts').data)
  # Fits whole: BOS prompt SEP response, no EOS, pad after; masks cover the responses only.
  e = preferences.encode_preference(tok, 'Who is there?', 'Nay, answer me.', 'Stand.', 40)
  for row, mask, resp in ((e.chosen, e.chosen_loss_mask, 'Nay, answer me.'),
                          (e.rejected, e.rejected_loss_mask, 'Stand.')):
    want = [tok.bos_id, *tok.encode('Who is there?\n\n'), *tok.encode(resp)]
    assert row.shape == (41,) and row.dtype == np.int32 and mask.shape == (40,)
    np.testing.assert_array_equal(row[:len(want)], want)
    assert (row[len(want):] == tokenizers.PAD).all() and tok.eos_id not in row
    on = _run(mask)
    assert tok.decode(row[1:][on]) == resp and on[0] == len(tok.encode('Who is there?\n\n'))
  assert (e.prompt_cut, e.chosen_cut, e.rejected_cut) == (0, 0, 0)
  # The longer response sets the prompt cut for both sides (at least half the window).
  prompt, long_resp = 'p' * 30 + 'END', 'START' + 'r' * 40
  for chosen, rejected in ((long_resp, 'Ay.'), ('Ay.', long_resp)):
    e = preferences.encode_preference(tok, prompt, chosen, rejected, 20)
    keep = max(20 - len(long_resp), 20 // 2)
    ctx = (prompt + '\n\n')[-keep:]
    assert e.prompt_cut == len(prompt) + 2 - keep
    for row, mask, resp in ((e.chosen, e.chosen_loss_mask, chosen),
                            (e.rejected, e.rejected_loss_mask, rejected)):
      on = _run(mask)
      assert tok.decode(row[:on[0] + 1]) == ctx                     # same prompt side
      assert tok.decode(row[1:][on]) == resp[:20 - keep]
    cuts = {chosen: e.chosen_cut, rejected: e.rejected_cut}
    assert cuts[long_resp] == len(long_resp) - (20 - keep) and cuts['Ay.'] == 0
  # A short longer response leaves the prompt more than half the window.
  e = preferences.encode_preference(tok, 'x' * 50, 'Ay.', 'No!', 20)
  assert tok.decode(e.chosen) == 'x' * (20 - 3 - 2) + '\n\nAy.' and e.chosen[-1] != 0
  assert tok.decode(e.rejected) == 'x' * 15 + '\n\nNo!'


def test_preference_split_rule_and_rows_match_the_store(data_dir, store):
  path, rows = store
  c = _config(data_dir, 'shakespeare_preferences', records=path).data
  tok = corpus.tokenizer(c)
  by_split = {s: [r for r in rows if _split_of(r) == s] for s in ('train', 'test')}
  assert by_split['train'] and by_split['test']
  # Both the hash rule and the metadata rule are exercised, and metadata wins.
  assert any(not r.get('metadata') and _hash_split(r['prompt']) == 'test' for r in rows)
  assert any((r.get('metadata') or {}).get('split') == 'train' and _hash_split(r['prompt']) == 'test'
             for r in rows)
  for r in rows:
    assert preferences.preference_split(r['prompt'], r.get('metadata')) == _split_of(r)
  # A prompt without a metadata split sits in one split only.
  seen = {}
  for r in rows:
    if (r.get('metadata') or {}).get('split') is None:
      assert seen.setdefault(r['prompt'], _split_of(r)) == _split_of(r)
  for split, want in by_split.items():
    got = preferences.preference_pairs(c, split)
    assert [r['id'] for r in got] == [r['id'] for r in want]        # store id order
    assert all(r['source'] == 'synthetic' for r in got)
    read = datasets.reader(c, split)
    assert read.num_examples == len(want)
    np.testing.assert_array_equal(read.record_ids, [r['id'] for r in want])
    idx = np.arange(len(want))
    chosen, labels = read.rows(idx)
    entries = read.row_entries(idx)
    assert labels is None and chosen.shape == (len(want), L + 1) and chosen.dtype == np.int32
    assert set(entries) == {'loss_mask', 'rejected', 'rejected_loss_mask'}
    assert entries['rejected'].shape == (len(want), L + 1)
    for i, r in enumerate(want):
      ctx = tok.encode(r['prompt'] + dialogue.SEPARATOR)
      longer = max(len(tok.encode(r['chosen'])), len(tok.encode(r['rejected'])))
      keep = min(len(ctx), max(L - longer, L // 2))
      for row, mask, resp in ((chosen[i], entries['loss_mask'][i], r['chosen']),
                              (entries['rejected'][i], entries['rejected_loss_mask'][i],
                               r['rejected'])):
        assert mask.dtype == np.float32 and row[0] == tok.bos_id
        assert tok.eos_id not in row
        on = _run(mask)
        assert on[0] == keep                                        # the shared prompt side
        np.testing.assert_array_equal(row[1:keep + 1], ctx[len(ctx) - keep:])
        resp_ids = tok.encode(resp)
        np.testing.assert_array_equal(row[1:][on], resp_ids[:L - keep])
        assert (row[1:][on[-1] + 1:] == tokenizers.PAD).all()
  # Long pairs were really cut, on both sides alike.
  long_rows = [i for i, r in enumerate(by_split['train']) if r['prompt'].endswith('THE END')]
  read = datasets.reader(c, 'train')
  assert len(long_rows) == 2
  for i in long_rows:
    e = read.row_entries(np.array([i]))
    c_on, r_on = _run(e['loss_mask'][0]), _run(e['rejected_loss_mask'][0])
    assert c_on[0] == r_on[0] == L // 2 and max(c_on[-1], r_on[-1]) == L - 1
  # Another source: only its pairs.
  c.preference_source = 'human'
  humans = preferences.preference_pairs(c, 'train') + preferences.preference_pairs(c, 'test')
  assert sorted(r['chosen'] for r in humans) == ['A human choice.', 'Within, my lord.']
  c.preference_source = 'all'
  assert datasets.reader(c, 'test').num_examples == len(by_split['test']) + 1


def test_preference_batches_and_info(data_dir, store):
  path, rows = store
  c = _config(data_dir, 'shakespeare_preferences', records=path).data
  n = {s: sum(_split_of(r) == s for r in rows) for s in ('train', 'test')}
  assert datasets.info(c) == datasets.DatasetInfo((L + 1,), 0, n['train'], n['test'], 'tokens')
  read = datasets.reader(c, 'train')
  idx = np.arange(read.num_examples)
  want = {'tokens': read.rows(idx)[0], **read.row_entries(idx)}
  index = {r.tobytes(): i for i, r in enumerate(want['tokens'])}
  assert len(index) == read.num_examples                            # rows are distinct
  batch = next(pipeline.train_iterator(c, 4, seed=0))
  assert set(batch) == {'tokens', 'loss_mask', 'rejected', 'rejected_loss_mask'}
  shapes = {'tokens': ((4, L + 1), np.int32), 'loss_mask': ((4, L), np.float32),
            'rejected': ((4, L + 1), np.int32), 'rejected_loss_mask': ((4, L), np.float32)}
  for k, (shape, dtype) in shapes.items():
    assert batch[k].shape == shape and batch[k].dtype == dtype, k
  for j, row in enumerate(batch['tokens']):
    i = index[row.tobytes()]
    for k in want:
      np.testing.assert_array_equal(batch[k][j], want[k][i], err_msg=k)
  batches = list(pipeline.eval_batches(c, 4))
  assert len(batches) == pipeline.num_eval_batches(c, 4) == -(-n['test'] // 4)
  assert set(batches[0]) == set(shapes) | {'mask'}
  got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  test = datasets.reader(c, 'test')
  t_idx = np.arange(n['test'])
  np.testing.assert_array_equal(got['mask'], np.arange(len(got['mask'])) < n['test'])
  np.testing.assert_array_equal(got['tokens'][:n['test']], test.rows(t_idx)[0])
  for k, v in test.row_entries(t_idx).items():
    np.testing.assert_array_equal(got[k][:n['test']], v, err_msg=k)
    assert not got[k][n['test']:].any()


def test_max_pairs_keeps_the_first_train_pairs(data_dir, store):
  """data.max_pairs = N: the first N train pairs in store order (reward models by data size);
  the eval split keeps all of its pairs."""
  path, _ = store
  c = _config(data_dir, 'shakespeare_preferences', records=path).data
  full = datasets.reader(c, 'train')
  c.max_pairs = 3
  info = datasets.info(c)
  part = datasets.reader(c, 'train')
  assert part.num_examples == info.num_train == 3 < full.num_examples
  np.testing.assert_array_equal(part.rows(np.arange(3))[0], full.rows(np.arange(3))[0])
  np.testing.assert_array_equal(part.record_ids, full.record_ids[:3])
  assert info.num_eval == datasets.reader(c, 'test').num_examples > 0
  c.max_pairs = -1
  with pytest.raises(configs.ConfigError, match='data.max_pairs'):
    datasets.validate(c)


def test_a_changed_store_is_read_again(data_dir, tmp_path):
  path = str(tmp_path / 'grow.db')
  with records.RecordStore(path) as s:
    s.add_preference('Is it the king?', 'It is.', 'No.', source='synthetic',
                     metadata={'split': 'train'})
  c = _config(data_dir, 'shakespeare_preferences', records=path).data
  first = datasets.reader(c, 'train')
  assert datasets.reader(c, 'train') is first                            # cached while unchanged
  assert first.num_examples == 1
  # No test pairs yet: a clear error naming the store, the source and the split.
  with pytest.raises(ValueError) as e:
    datasets.info(c)
  msg = str(e.value)
  assert 'config.data.records=' in msg and path in msg and "'synthetic'" in msg
  assert "'test'" in msg and '\n' not in msg
  with records.RecordStore(path) as s:
    new_id = s.add_preference('And the queen?', 'She comes.', 'Never.', source='synthetic',
                              metadata={'split': 'train'})
    s.add_preference('Held out?', 'Yes.', 'No.', source='synthetic', metadata={'split': 'test'})
  again = datasets.reader(c, 'train')
  assert again is not first and again.num_examples == 2 and again.record_ids[-1] == new_id
  assert first.num_examples == 1                                     # the old reader is intact
  assert datasets.info(c).num_train == 2 and datasets.info(c).num_eval == 1
  tok = corpus.tokenizer(c)
  on = _run(again.row_entries(np.array([1]))['loss_mask'][0])
  assert tok.decode(again.rows(np.array([1]))[0][0][1:][on]) == 'She comes.'
  # Seen while a writer keeps the store open (the commit sits in the WAL file).
  with records.RecordStore(path) as s:
    s.add_preference('Still open?', 'Aye.', 'No.', source='synthetic',
                     metadata={'split': 'train'})
    assert datasets.reader(c, 'train').num_examples == 3


# ---------------------------------------------------------------------------------------------
# Config errors


def _config_error(c) -> str:
  with pytest.raises(configs.ConfigError) as e:
    configs.validate(c, 2)
  msg = str(e.value)
  assert '\n' not in msg
  return msg


def test_one_line_config_errors(data_dir, store, tmp_path):
  c = _config(data_dir, 'shakespeare_preferences')
  msg = _config_error(c)
  assert msg.startswith("config.data.records='': ") and 'research.rlhf.preferences' in msg
  missing = str(tmp_path / 'nope.db')
  c.data.records = missing
  msg = _config_error(c)
  assert msg.startswith(f'config.data.records={missing!r}: no such file')
  assert 'research.rlhf.preferences' in msg and 'research.records' in msg
  c.data.records = store[0]
  configs.validate(c, 2)
  c.data.preference_source = 'crowd'
  msg = _config_error(c)
  assert msg.startswith("config.data.preference_source='crowd'")
  for source in preferences.SOURCES:
    assert repr(source) in msg
  c.data.preference_source = 'human'
  c.data.eval_split = 'test[:50%]'
  assert _config_error(c).startswith("config.data.eval_split='test[:50%]'")
  # The preference fields on any other dataset.
  c = _config(data_dir, 'shakespeare_prompts', records=store[0])
  msg = _config_error(c)
  assert msg.startswith(f'config.data.records={store[0]!r}: applies only to the preference')
  assert "leave it at ''" in msg
  c = _config(data_dir, 'shakespeare_dialogue', preference_source='human')
  assert _config_error(c).startswith("config.data.preference_source='human': applies only")
  c = _config(data_dir, 'shakespeare_prompts')
  configs.validate(c, 2)
