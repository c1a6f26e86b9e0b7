"""Synthetic preferences for RLHF: the hidden lexicon reward (research/rlhf/sentiment.py), the
Bradley-Terry labelers and the pairs they write to the record store, end to end from a tiny
dialogue LM (research/rlhf/preferences.py)."""
import math

import jax
import numpy as np
import pytest

from research import configs, records, trainer
from research.data import corpus, dialogue
from research.rlhf import preferences as prefs
from research.rlhf import sentiment
from tests.helpers import load_config

# ---------------------------------------------------------------------------------------------
# The true reward


def test_lexicon_is_documented_sized_and_disjoint():
  assert 40 <= len(sentiment._POSITIVE_GROUPS) <= 60
  assert 40 <= len(sentiment._NEGATIVE_GROUPS) <= 60
  assert not sentiment.POSITIVE & sentiment.NEGATIVE
  for w in ('love', "lov'd", 'sweet', 'fair', 'gentle', 'noble', 'honour', 'bless'):
    assert w in sentiment.POSITIVE, w
  for w in ('death', 'die', 'villain', 'woe', 'blood', 'alas', "kill'd", 'revenge'):
    assert w in sentiment.NEGATIVE, w
  assert all(w == w.lower() and sentiment.WORD.fullmatch(w)
             for w in sentiment.POSITIVE | sentiment.NEGATIVE)


@pytest.mark.parametrize('text, want', [
    ('', 0), ('Who is there?', 0),
    ('I love thee.', 1),
    ('LOVE, love! Love? lOvE;', 4),                         # case and punctuation
    ("He lov'd her, she loves him, loving all.", 3),        # inflections, archaic -'d
    ("Sweet love's a fair thing", 3),                        # trailing 's dropped
    ("'Tis sweet", 1), ('"sweet"', 1),                       # quotes are not part of a word
    ("kill'd", -1), ("o'er the foul deep", -1),
    ('glove, beloved, lovers-ing, deadline, dieting', 1),    # only whole words: 'lovers'
    ('a fair-faced villain', 0),                             # hyphen splits words
    ('Alas, poor Yorick! Good night, sweet prince.', 0),     # -2 + 2
    ('O woe, woe, woeful day! Death and blood.', -5),
])
def test_score(text, want):
  assert sentiment.score(text) == want
  assert sentiment.score(text) == sum(s for _, s in sentiment.words(text))


def test_words_and_scores():
  assert sentiment.words("My lov'd friend's DEATH, alas.") == [
      ("lov'd", 1), ('friend', 1), ('death', -1), ('alas', -1)]
  s = sentiment.scores(['good', 'bad day', 'foul foul', ''])
  assert s.dtype == np.float32 and s.shape == (4,)
  np.testing.assert_array_equal(s, [1, 0, -2, 0])
  assert sentiment.scores([]).shape == (0,)


# ---------------------------------------------------------------------------------------------
# Bradley-Terry labelers


def test_noiseless_labeler_always_prefers_the_higher_reward():
  rng = np.random.default_rng(0)
  ra, rb = rng.integers(-3, 4, 4000), rng.integers(-3, 4, 4000)
  a = prefs.bradley_terry(rng, ra, rb, 0.0)
  assert a.dtype == bool and a.shape == (4000,)
  np.testing.assert_array_equal(a[ra != rb], (ra > rb)[ra != rb])
  tie = ra == rb
  assert 0.45 < a[tie].mean() < 0.55 and tie.sum() > 400     # ties: a fair coin
  np.testing.assert_array_equal(prefs.preference_probability([2, 1, 1], [1, 2, 1], 0),
                                [1, 0, 0.5])
  with pytest.raises(ValueError, match='temperature'):
    prefs.bradley_terry(rng, ra, rb, -1.0)


def test_bradley_terry_frequencies_match_the_sigmoid():
  rng = np.random.default_rng(1)
  n, t = 20000, 1.5
  for diff in (-4.0, -1.0, 0.0, 0.5, 2.0, 6.0):
    a = prefs.bradley_terry(rng, np.full(n, 1.0 + diff), np.full(n, 1.0), t)
    p = 1 / (1 + math.exp(-diff / t))
    assert abs(a.mean() - p) < 4.5 * math.sqrt(p * (1 - p) / n) + 1e-3, (diff, a.mean(), p)
  # The probability is exactly the sigmoid, overflow-free far out.
  np.testing.assert_allclose(prefs.preference_probability([3.0], [1.0], 2.0),
                             [1 / (1 + math.exp(-1.0))], rtol=1e-12)
  assert prefs.preference_probability(1e6, -1e6, 1e-3) == 1.0


def test_label_pairs_validate_and_round_trip_through_the_store(tmp_path):
  prompts = ['Who is there?', 'Speak.', 'My lord?', 'Nay, answer me.']
  a = ['Good sweet love.', 'Death!', 'Ay.', 'Alas.']
  b = ['Foul villain.', 'Fair day.', 'No.', 'Good.']
  recs = prefs.label_pairs(prompts, a, b, np.random.default_rng(0), 0.0, 'test',
                           extra_metadata={'policy': 'p'})
  assert len(recs) == 4
  for r, pa, pb in zip(recs, a, b):
    assert {r['chosen'], r['rejected']} == {pa, pb}
    m = r['metadata']
    assert m['reward_chosen'] == sentiment.score(r['chosen'])
    assert m['reward_rejected'] == sentiment.score(r['rejected'])
    assert m['reward_chosen'] >= m['reward_rejected']           # noiseless
    assert r['score'] == (0.5 if m['reward_chosen'] == m['reward_rejected'] else 1.0)
    assert m == {'split': 'test', 'task': 'sentiment', 'reward_chosen': m['reward_chosen'],
                 'reward_rejected': m['reward_rejected'], 'labeler_temperature': 0.0,
                 'policy': 'p'}
  assert [r['chosen'] for r in recs[:2]] == ['Good sweet love.', 'Fair day.']
  noisy = prefs.label_pairs(prompts, a, b, np.random.default_rng(0), 1.0, 'train')
  for r in noisy:   # score = P(the choice made) under the labeler's model
    d = r['metadata']['reward_chosen'] - r['metadata']['reward_rejected']
    assert r['score'] == pytest.approx(1 / (1 + math.exp(-d)))
  with records.RecordStore(tmp_path / 'prefs.sqlite') as store:
    ids = store.add_preferences(recs + noisy)
    assert len(ids) == 8 and store.count('preferences', source='synthetic') == 8
    back = store.preferences(source='synthetic')
    assert store.preferences(source='human') == []
    assert [r['metadata'] for r in back] == [r['metadata'] for r in recs + noisy]
    assert [(r['prompt'], r['chosen'], r['rejected']) for r in back] == [
        (r['prompt'], r['chosen'], r['rejected']) for r in recs + noisy]
    assert {r['labeler_hash'] for r in back[:4]} == {store.hash_id('bradley_terry(t=0)')}
    assert {r['labeler_hash'] for r in back[4:]} == {store.hash_id('bradley_terry(t=1)')}
  with pytest.raises(ValueError, match='one of each'):
    prefs.label_pairs(prompts, a, b[:3], np.random.default_rng(0), 1.0, 'train')


# ---------------------------------------------------------------------------------------------
# End to end from a tiny dialogue LM


@pytest.fixture(scope='module')
def policy(tmp_path_factory):
  """A tiny sft_shakespeare_dialogue run from scratch (2 steps, seq_len 32): its workdir."""
  c = load_config('sft_shakespeare_dialogue')
  c.data.data_dir = str(tmp_path_factory.mktemp('rlhf_data'))
  c.data.seq_len = 32
  c.data.train_split = 'train[:2]'
  c.data.read_threads = 2
  c.data.num_eval_examples = 16
  c.model.update(num_layers=1, num_heads=2, d_model=32, dropout=0.0)
  c.train.update(batch_size=8, num_steps=2, log_every=1, eval_every=2, sample_every=100,
                 checkpoint_every=2)
  c.optimizer.schedule.warmup_steps = 1
  c.eval.batch_size = 16
  c.eval.num_samples = 0
  c.sample.max_new_tokens = 12
  work = str(tmp_path_factory.mktemp('rlhf_policy'))
  configs.validate(c, 2)
  trainer.train(c, work)
  return work


def test_sample_responses(policy):
  long_prompt = 'Speak, ' * 40
  key = jax.random.PRNGKey(3)
  out = prefs.sample_responses(policy, ['Who is there?', long_prompt, 'Ay.'], key,
                               num_per_prompt=2, max_new_tokens=12, batch_size=4)
  assert len(out) == 3 and all(len(r) == 2 for r in out)
  assert all(isinstance(s, str) and len(s) <= 12 for r in out for s in r)   # char tokenizer
  again = prefs.sample_responses(policy, ['Who is there?', long_prompt, 'Ay.'], key,
                                 num_per_prompt=2, max_new_tokens=12, batch_size=4)
  assert again == out
  # The prompt keeps BOS and its end: 20 = max_len 32 - 12 tokens in all.
  tok = corpus.tokenizer(prefs.read_config(policy).data)
  ids = dialogue.encode_prompt(tok, long_prompt, 20)   # the row sample_responses feeds
  assert len(ids) == 20 and ids[0] == tok.bos_id
  assert tok.decode(ids) == (long_prompt + '\n\n')[-19:]
  with pytest.raises(ValueError, match='max_new_tokens'):
    prefs.sample_responses(policy, ['Ay.'], key, max_new_tokens=31)


def test_cli_run_writes_labeled_pairs_of_disjoint_splits(policy, tmp_path, capsys):
  store = str(tmp_path / 'prefs.sqlite')
  train = prefs.run(policy, store, 'train', 5, max_new_tokens=12, batch_size=4, seed=1)
  test = prefs.run(policy, store, 'test', 3, max_new_tokens=12, batch_size=4, seed=1,
                   labeler_temperature=0.0)
  out = capsys.readouterr().out
  assert '5 train pairs from 5 prompts' in out and 'ties' in out and 'mean true reward' in out
  assert (train['pairs'], test['pairs'], test['synthetic_pairs_in_store']) == (5, 3, 8)
  assert 0 <= train['tie_fraction'] <= 1
  with records.RecordStore(store) as s:
    rows = s.preferences(source='synthetic')
    assert len(rows) == s.count('preferences') == 8
    assert {r['labeler_hash'] for r in rows[5:]} == {s.hash_id('bradley_terry(t=0)')}
  for r in rows:
    m = r['metadata']
    assert set(m) == {'split', 'task', 'reward_chosen', 'reward_rejected', 'labeler_temperature',
                      'policy', 'policy_step', 'sampling_temperature', 'max_new_tokens', 'seed'}
    assert m['task'] == 'sentiment' and m['policy_step'] == 2 and m['max_new_tokens'] == 12
    assert m['reward_chosen'] == sentiment.score(r['chosen'])
    assert m['reward_rejected'] == sentiment.score(r['rejected'])
    assert 0 < r['score'] <= 1
  assert [r['metadata']['split'] for r in rows] == ['train'] * 5 + ['test'] * 3
  train_prompts = [r['prompt'] for r in rows[:5]]
  test_prompts = [r['prompt'] for r in rows[5:]]
  assert len(set(train_prompts)) == 5 and len(set(test_prompts)) == 3
  data_cfg = prefs.dialogue_data_config(prefs.read_config(policy))
  all_test = {p for p, _ in dialogue.pairs(data_cfg, 'test')}
  assert set(test_prompts) <= all_test and not set(train_prompts) & all_test
  assert prefs.select_prompts(data_cfg, 'test', 3, 1) == test_prompts     # seeded order
  assert prefs.select_prompts(data_cfg, 'test', 3, 2) != test_prompts
  with pytest.raises(ValueError, match='split'):
    prefs.select_prompts(data_cfg, 'validation', 3, 1)


def test_cli_defines_flags_only_as_a_command():
  from absl import flags
  assert 'labeler_temperature' not in flags.FLAGS
