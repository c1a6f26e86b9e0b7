"""The LM family in the harness: data-parallel step, exact held-out bits/char, curriculum by
sequence length, sampling from the CLI, config errors."""
import math
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from research import configs, parallel, trainer
from research.data import corpus, datasets, pipeline
from tests.helpers import ROOT, cli, load_config


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('lm_data'))


def tiny(data_dir, **data):
  c = load_config('lm_shakespeare_char')
  c.data.data_dir = data_dir
  c.data.seq_len = 32
  c.model.update(num_layers=2, num_heads=2, d_model=32, dropout=0.0)
  c.train.update(batch_size=8, num_steps=6, log_every=3, eval_every=6, sample_every=6,
                 checkpoint_every=6)
  c.optimizer.schedule.warmup_steps = 2
  c.data.num_eval_examples = 40
  c.eval.batch_size = 16
  c.eval.num_samples = 2
  c.sample.max_new_tokens = 12
  for k, v in data.items():
    c.data[k] = v
  return c


def test_two_device_step_equals_one_device_step(data_dir):
  assert jax.device_count() == 2
  c = tiny(data_dir)
  c.optimizer.grad_accum_steps = 2       # the scan over microbatches, on each device
  configs.validate(c, 2)
  batch = next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed))
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    exp = trainer.build(c, mesh)
    state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, mesh))
    for i in range(2):
      state, metrics = exp.train_step(state, parallel.host_batch_to_global(batch, mesh),
                                      jax.random.key(i))
    out.append(parallel.to_host((state.params, metrics)))
  chex.assert_trees_all_close(out[0], out[1], atol=1e-5, rtol=1e-5)
  assert out[0][1]['loss'] < math.log(corpus.tokenizer(c.data).vocab_size) + 0.5


def test_eval_scores_every_held_out_character_once(data_dir):
  """bits/char = NLL sum / characters of the held-out plays: the eval's character count is the
  text's, for characters and for BPE pieces alike."""
  results = {}
  for tok in ('char', 'bpe'):
    c = tiny(data_dir, tokenizer=tok, vocab_size=512)
    c.data.num_eval_examples = -1
    c.data.seq_len = 256
    c.eval.batch_size = 256
    configs.validate(c, 2)
    exp = trainer.build(c)
    state = trainer.init_state(exp, trainer._train_iterator(c))
    m = trainer.evaluate(exp, state, jax.random.key(0))
    n_windows = datasets.info(c.data).num_eval
    chars = sum(len(t) for _, t in corpus.documents(c.data, 'test'))
    assert m['num_chars'] * n_windows == pytest.approx(chars, abs=0.5)
    assert m['bits_per_char'] == pytest.approx(m['nll_sum'] / m['num_chars'] / math.log(2))
    # Every scored token spells its characters, except the plays' BOS/EOS: 3 held-out plays,
    # the first BOS is never a target.
    plays = len(corpus.documents(c.data, 'test'))
    if tok == 'char':
      assert (m['num_tokens'] - m['num_chars']) * n_windows == pytest.approx(2 * plays - 1)
    results[tok] = m
  char = results['char']
  assert char['bits_per_char'] * char['num_chars'] == pytest.approx(
      char['bits_per_token'] * char['num_tokens'])
  assert results['bpe']['num_tokens'] < results['bpe']['num_chars']
  # An untrained model is near uniform: log2(vocab) bits per token.
  v = corpus.tokenizer(tiny(data_dir).data).vocab_size
  assert abs(results['char']['bits_per_token'] - math.log2(v)) < 0.5


def test_curriculum_cuts_sequences_to_its_length(data_dir):
  c = tiny(data_dir)
  c.curriculum.update(name='piecewise', boundaries='3', levels='8,32')
  configs.validate(c, 2)
  seen = []
  trainer.train(c, data_dir + '/curriculum_run',
                on_step=lambda s, b: seen.append(b['tokens'].shape[1]))
  assert seen == [9, 9, 9, 33, 33, 33]     # what the train step got: 8 tokens, then 32
  lengths = []
  fam = configs.family_class('lm')(c)
  batch = next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed))
  for level in (8, 32):
    cut = fam.apply_curriculum(batch, level)
    lengths.append(cut['tokens'].shape[1])
    np.testing.assert_array_equal(cut['tokens'], batch['tokens'][:, :level + 1])
  assert lengths == [9, 33]
  c.curriculum.end = 64
  with pytest.raises(configs.ConfigError, match='curriculum.end'):
    configs.validate(c, 2)


def test_train_then_sample_from_the_cli(data_dir, tmp_path):
  work = str(tmp_path / 'run')
  args = ['--config=experiments/lm_shakespeare_char/config.py', f'--workdir={work}',
          f'--config.data.data_dir={data_dir}', '--config.data.seq_len=32',
          '--config.model.num_layers=1', '--config.model.d_model=32', '--config.model.num_heads=2',
          '--config.train.batch_size=8', '--config.train.num_steps=4',
          '--config.train.log_every=2', '--config.train.eval_every=4',
          '--config.train.sample_every=4', '--config.train.checkpoint_every=4',
          '--config.optimizer.schedule.warmup_steps=1', '--config.data.num_eval_examples=16',
          '--config.eval.batch_size=16', '--config.sample.max_new_tokens=10']
  cli(args)
  from research.data import tokenizers  # pylint: disable=g-import-not-at-top
  saved = tokenizers.load(str(tmp_path / 'run' / 'tokenizer'))   # the run is self-contained
  assert saved == corpus.tokenizer(tiny(data_dir).data)
  out = cli(args + ['--mode=sample', '--config.prompt=ROMEO. ', '--config.eval.num_samples=3'])
  samples = [l for l in out.stdout.splitlines() if l.startswith('ROMEO. ')]
  assert len(samples) == 3, out.stdout
  assert any(len(s) > len('ROMEO. ') for s in samples)


@pytest.mark.parametrize('field,value,match', [
    ('model.d_model', 30, 'model.d_model'),
    ('sample.max_new_tokens', 32, 'sample.max_new_tokens'),
    ('model.max_len', 16, 'model.max_len'),
    ('model.mlp', 'relu', 'model.mlp'),
])
def test_config_errors_name_the_field(data_dir, field, value, match):
  c = tiny(data_dir)
  section, name = field.split('.')
  c[section][name] = value
  with pytest.raises(configs.ConfigError, match=match) as e:
    configs.validate(c, 2)
  assert '\n' not in str(e.value)


def test_samples_never_contain_pad_bos_or_unk(data_dir):
  """An untrained LM made to favour the special ids (tied embedding: the other rows zeroed, the
  specials' rows scaled up) fills an unbanned sample with them; the family's samples ban them
  (renormalising over the rest)."""
  from research.lm import generate as gen
  c = tiny(data_dir)
  mesh = parallel.make_mesh(jax.devices()[:1])
  exp = trainer.build(c, mesh)
  batch = next(pipeline.train_iterator(c.data, c.train.batch_size, c.seed))
  state = exp.init(jax.random.key(0), parallel.host_batch_to_global(batch, mesh))
  family, tok = exp.family, exp.family.tokenizer
  specials = [tok.pad_id, tok.bos_id, tok.unk_id]
  params = jax.device_get(state.params)
  emb = np.array(params['embedding'])
  keep = np.zeros(len(emb), bool)
  keep[specials] = True
  emb = np.where(keep[:, None], 50.0 * emb / np.abs(emb).max(), 0.0).astype(emb.dtype)
  params['embedding'] = emb
  state = state.replace(params=params)
  out = jax.device_get(family.sample(state, jax.random.key(1), 8))
  tokens = np.asarray(out['tokens'])[np.asarray(out['mask']) > 0]
  assert len(tokens) > 0 and not np.isin(tokens, specials).any(), tokens
  prompts, pmask = gen.pad_prompts([family.prompt_tokens()] * 8, tok.pad_id)
  free = gen.generate(family._bound_apply, family.model_params(params), prompts, pmask,
                      jax.random.key(1), max_new_tokens=c.sample.max_new_tokens,
                      cfg=family.model_cfg)
  assert np.isin(np.asarray(free['tokens']), specials).mean() > 0.5   # unbanned: mostly specials
  logits = np.tile(np.arange(6.0)[::-1], (64, 1)) * 3
  toks, logp = gen.sample_logits(jax.random.key(0), logits, banned=(0, 1, 3))
  assert not np.isin(np.asarray(toks), [0, 1, 3]).any()
  probs = np.exp(np.arange(6.0)[::-1] * 3)[[2, 4, 5]]
  np.testing.assert_allclose(np.exp(np.asarray(logp))[np.asarray(toks) == 2],
                             probs[0] / probs.sum(), rtol=1e-5)


def test_evaluate_a_text_run_reports_text_metrics(data_dir, tmp_path):
  """`python -m research.evaluate` on an LM run: held-out bits/char (deterministic: one draw),
  and per-draw sample metrics (diversity, repetition, memorization) with their s.e."""
  from research import evaluate
  c = tiny(data_dir)
  c.eval.num_samples = 4
  work = str(tmp_path / 'run')
  trainer.train(c, work)
  result = evaluate.evaluate_run(work, num_draws=3)
  held, m = result['heldout'], result['metrics']
  assert 0 < held['bits_per_char'] < 10 and held['bits_per_char_se'] == 0
  assert result['num_draws'] == 3 and result['num_samples'] == 4
  for k in ('distinct_1', 'distinct_2', 'repetition_4', 'chars', 'train_overlap_chars',
            'copied_fraction'):
    assert np.isfinite(m[k]) and np.isfinite(m[f'{k}_se']), k
  assert 0 <= m['distinct_1'] <= 1 and m['chars'] > 0
  assert len({d['distinct_2'] for d in result['draws']}) > 1     # independent draws
  assert result['samples']['tag'] == f't{c.sample.temperature:g}'   # what drew the samples
  table = evaluate.format_table(result)
  assert 'bits_per_char' in table and 'train_overlap_chars' in table and ' ± ' in table
  proc = subprocess.run([sys.executable, '-m', 'research.evaluate', f'--workdir={work}',
                         '--draws=3'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'repetition_4' in proc.stdout and 'eval_t0.8.json' in proc.stdout
  # Without the .[embed] extra the similarity is skipped with a note naming the install.
  if 'embedding_similarity' in result['notes']:
    assert 'pip install' in result['notes']['embedding_similarity']


def _letter_embedding(texts):
  """A stand-in sentence encoder (letter counts), so the similarity path runs without torch."""
  return np.array([[t.lower().count(c) for c in 'abcdefghijklmnopqrstuvwxyz'] for t in texts],
                  np.float64)


def test_text_samples_are_compared_with_held_out_passages(data_dir, tmp_path, monkeypatch):
  """With a sentence encoder: each draw's mean similarity (1-5) of a sample to its nearest
  held-out passage, and the same for real held-out passages as the yardstick."""
  from research import evaluate, evaluate_text
  from research.evaluation import text_metrics
  monkeypatch.setattr(text_metrics, '_DEFAULT_EMBED_FN', _letter_embedding)
  c = tiny(data_dir)
  c.eval.num_samples = 4
  work = str(tmp_path / 'run')
  trainer.train(c, work)
  result = evaluate.evaluate_run(work, num_draws=2)
  m, real = result['metrics'], result['reference']['heldout_embedding_similarity']
  assert 1 <= m['embedding_similarity'] <= 5 and np.isfinite(m['embedding_similarity_se'])
  assert 4 < real <= 5                    # real passages are close to some other real passage
  assert 'embedding_similarity' not in result['notes']
  assert 'heldout_embedding_similarity' in evaluate.format_table(result)
  passages = evaluate_text.heldout_passages(c, 30, num=6)
  assert len(passages) == 6 and all(len(p) == 30 for p in passages)
  one = text_metrics.nearest_similarity([passages[0], 'zzzz'], [passages[0]], _letter_embedding)
  np.testing.assert_allclose(one, [5.0])
