"""RLHF families end to end on tiny models: the reward model (Bradley-Terry), PPO (a bandit-like
token reward converges on 1 and 2 devices; the logged KL is the KL in the rewards; a run with a
reward model through the harness, resumed) and DPO (zero implicit reward at the start, then
learning the pairs)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import configs, parallel, trainer
from research.data import pipeline, tokenizers
from research.records import RecordStore
from research.rlhf import best_of_n, gold, heads, ppo
from tests.helpers import load_config

MODEL = dict(num_layers=2, num_heads=2, d_model=32, dropout=0.0)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('rlhf_data'))


def _common(c, data_dir):
  c.data.data_dir = data_dir
  c.data.read_threads = 2
  c.model.update(**MODEL)
  c.train.update(log_every=1, eval_every=1000, sample_every=1000, checkpoint_every=1000)
  c.eval.num_samples = 0
  return c


@pytest.fixture(scope='module')
def sft(data_dir, tmp_path_factory):
  """A tiny SFT run (4 steps from scratch): the policy and the reference."""
  c = _common(load_config('sft_shakespeare_dialogue'), data_dir)
  c.data.seq_len = 48
  c.init_from.workdir = ''
  c.train.update(batch_size=8, num_steps=4, eval_every=4, checkpoint_every=4)
  c.optimizer.schedule.warmup_steps = 1
  c.data.num_eval_examples = 8
  c.eval.batch_size = 8
  c.sample.max_new_tokens = 8
  work = str(tmp_path_factory.mktemp('sft'))
  configs.validate(c, 2)
  trainer.train(c, work)
  return work


@pytest.fixture(scope='module')
def store(tmp_path_factory):
  """Pairs whose chosen reply always says 'love' and the rejected one 'hate'."""
  path = str(tmp_path_factory.mktemp('store') / 'prefs.sqlite')
  rng = np.random.default_rng(0)
  words = ['my lord', 'the king', 'fair sir', 'good night', 'come away']
  records = []
  for i in range(48):
    prompt = f'{words[i % 5]} {i}'
    filler = ' '.join(rng.choice(words, 2))
    records.append(dict(prompt=prompt, chosen=f'I love {filler}', rejected=f'I hate {filler}',
                        source='synthetic',
                        metadata={'split': 'test' if i % 4 == 0 else 'train'}))
  with RecordStore(path) as s:
    s.add_preferences(records)
  return path


def _logged(workdir, split='train'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [m for m in map(json.loads, f) if m['split'] == split]


def tiny_rm(data_dir, store, sft):
  c = _common(load_config('rm_shakespeare_sentiment'), data_dir)
  c.data.records = store
  c.data.seq_len = 48
  c.init_from.workdir = sft
  c.optimizer.lr = 3e-3
  c.optimizer.schedule.warmup_steps = 1
  c.train.update(batch_size=8, num_steps=30, eval_every=30, checkpoint_every=30)
  c.eval.batch_size = 8
  return c


@pytest.fixture(scope='module')
def rm(data_dir, store, sft, tmp_path_factory):
  c = tiny_rm(data_dir, store, sft)
  configs.validate(c, 2)
  work = str(tmp_path_factory.mktemp('rm'))
  final = trainer.train(c, work)
  return work, final


def test_reward_model_learns_the_pairs(rm):
  _, final = rm
  # 'love' vs 'hate' is learnable: held-out pair accuracy well above chance.
  assert final['eval']['accuracy'] >= 0.9, final['eval']
  assert final['eval']['num_examples'] == 12
  assert final['eval']['loss'] < np.log(2)


def test_reward_model_loss_is_bradley_terry(data_dir, store, sft):
  c = tiny_rm(data_dir, store, sft)
  configs.validate(c, 1)
  exp = trainer.build(c, parallel.make_mesh(jax.devices()[:1]))
  fam = exp.family
  batch = next(iter(pipeline.eval_batches(c.data, 8)))
  state = trainer.init_state(exp, trainer._train_iterator(c))
  params = parallel.to_host(state.params)
  out = parallel.to_host(exp.eval_step(state, parallel.host_batch_to_global(batch, exp.mesh),
                                       jax.random.key(0)))[0]
  r_w = fam.scores(params, jnp.asarray(batch['tokens']))
  r_l = fam.scores(params, jnp.asarray(batch['rejected']))
  # The score reads the last real token: a row without its padding scores the same.
  for i in range(3):
    row = batch['tokens'][i]
    alone = jnp.asarray(row[row != tokenizers.PAD])[None]
    assert alone.shape[1] < row.shape[0]
    np.testing.assert_allclose(fam.scores(params, alone)[0], r_w[i], atol=1e-5)
  want = np.log1p(np.exp(-(np.asarray(r_w) - np.asarray(r_l))))
  np.testing.assert_allclose(out['loss'], want, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out['accuracy'], np.asarray(r_w) > np.asarray(r_l))


def bandit_config(data_dir, sft, devices):
  c = _common(load_config('ppo_shakespeare_sentiment'), data_dir)
  c.data.seq_len = 16
  c.model.max_len = 24
  c.init_from.workdir = sft
  c.rlhf.update(reward='token', reward_token=tokenizers.NUM_SPECIAL + 5, response_len=4,
                temperature=1.0, true_reward='', normalize_score=False)
  c.rlhf.reward_workdir = ''
  c.ppo.update(kl_coef=0.0, kl_target=0.0, epochs=2, minibatches=2, vf_coef=0.5)
  c.optimizer.lr = 1e-2
  c.train.update(batch_size=16, num_steps=25)
  c.data.num_eval_examples = 16
  c.eval.batch_size = 16
  c.sample.max_new_tokens = 4
  return c


@pytest.mark.parametrize('devices', [1, 2])
def test_ppo_bandit_converges_to_the_rewarded_token(data_dir, sft, devices, tmp_path):
  c = bandit_config(data_dir, sft, devices)
  configs.validate(c, devices)
  final = trainer.train(c, str(tmp_path), mesh=parallel.make_mesh(jax.devices()[:devices]))
  scores = [m['score'] for m in _logged(tmp_path)]
  assert scores[0] < 0.3, scores[:3]                 # a random 4-token reply rarely has it
  assert final['train']['score'] > 0.9, scores[-5:]  # every slot holds the token
  assert final['eval']['score'] > 0.9                # on held-out prompts too
  assert final['train']['logprob_gap'] < 1e-3       # sampler and teacher forcing agree


def test_logged_kl_is_the_kl_in_the_rewards(data_dir, sft):
  c = bandit_config(data_dir, sft, 1)
  c.ppo.update(kl_coef=0.3, kl_target=6.0, kl_horizon=100)
  configs.validate(c, 1)
  exp = trainer.build(c, parallel.make_mesh(jax.devices()[:1]))
  fam = exp.family
  it = trainer._train_iterator(c)
  state = trainer.init_state(exp, it)
  # A reference different from the policy, so the KL is not zero.
  ms = dict(state.model_state)
  ms['ref'] = jax.tree.map(lambda x: x * 0.9, heads.split(state.params, heads.VALUE)[0])
  state = state.replace(model_state=ms)
  batch = parallel.host_batch_to_global(next(it), exp.mesh)
  key = jax.random.key(3)

  def rollout(state, batch, key):
    step_key = jax.random.fold_in(key, state.step)
    k_gen, _ = jax.random.split(parallel.device_key(step_key))
    return fam.rollout(state, batch['tokens'], k_gen)
  ro = parallel.to_host(parallel.data_parallel(rollout, exp.mesh, batch_args=(1,),
                                               out_batched=True)(state, batch, key))
  beta = 0.3
  kl_seq = ro['kl'].sum(1)
  np.testing.assert_allclose(ro['rewards'].sum(1), ro['score'] - beta * kl_seq, atol=1e-5)
  np.testing.assert_array_equal(ro['score_norm'], [0, 1])     # normalize_score=False
  np.testing.assert_allclose(ro['kl'], (ro['logprobs'] - ro['ref_logprobs']) * ro['mask'],
                             atol=1e-6)
  assert abs(kl_seq.mean()) > 1e-3
  new_state, metrics = exp.train_step(state, batch, key)
  metrics = parallel.to_host(metrics)
  np.testing.assert_allclose(metrics['kl'], kl_seq.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['kl_coef'], beta)
  want_beta = ppo.adaptive_kl_coef(beta, kl_seq.mean(), 6.0, 100, c.train.batch_size)
  np.testing.assert_allclose(parallel.to_host(new_state.model_state['kl_coef']), want_beta,
                             rtol=1e-5)
  assert int(parallel.to_host(new_state.step)) == 1


@pytest.mark.parametrize('devices', [1, 2])
def test_ppo_on_the_true_reward_scores_the_decoded_replies(data_dir, sft, devices):
  """reward='true': the score is the hidden reward (here gold) of each decoded reply, computed on
  the host inside the jitted, data-parallel rollout; a whole iteration runs on it."""
  c = bandit_config(data_dir, sft, devices)
  c.rlhf.update(reward='true', true_reward='gold', reward_token=-1, response_len=8)
  c.sample.max_new_tokens = 8
  configs.validate(c, devices)
  exp = trainer.build(c, parallel.make_mesh(jax.devices()[:devices]))
  fam = exp.family
  it = trainer._train_iterator(c)
  state = trainer.init_state(exp, it)
  batch = parallel.host_batch_to_global(next(it), exp.mesh)
  key = jax.random.key(5)

  def rollout(state, batch, key):
    return fam.rollout(state, batch['tokens'], parallel.device_key(key))
  ro = parallel.to_host(parallel.data_parallel(rollout, exp.mesh, batch_args=(1,),
                                               out_batched=True)(state, batch, key))
  texts = [fam.tokenizer.decode(t[m > 0].tolist()) for t, m in zip(ro['tokens'], ro['mask'])]
  np.testing.assert_allclose(ro['score'], gold.scores(texts), rtol=1e-6)
  assert len(set(np.round(ro['score'], 4))) > len(texts) // 2     # dense: few ties
  _, metrics = exp.train_step(state, batch, key)
  metrics = parallel.to_host(metrics)
  assert np.isfinite(metrics['score']) and np.isfinite(metrics['pg_loss'])


def test_ppo_with_a_reward_model_runs_and_resumes(data_dir, sft, rm, tmp_path):
  c = _common(load_config('ppo_shakespeare_sentiment'), data_dir)
  c.data.seq_len = 24
  c.model.max_len = 48
  c.init_from.workdir = sft
  c.rlhf.update(reward_workdir=rm[0], response_len=8)
  c.ppo.update(epochs=1, minibatches=2)
  c.train.update(batch_size=8, num_steps=2, eval_every=2, checkpoint_every=1)
  c.data.num_eval_examples = 8
  c.eval.batch_size = 8
  c.sample.max_new_tokens = 8
  configs.validate(c, 2)
  work = str(tmp_path)
  final = trainer.train(c, work)
  ev = final['eval']
  assert {'score', 'kl', 'response_length', 'true_reward'} <= set(ev)
  assert 'tokens' not in ev and ev['num_examples'] == 8
  assert final['train']['kl_coef'] > 0
  # The frozen parts come from their runs: the reference is the SFT policy, the reward model
  # the RM's checkpoint.
  exp, state, _, _ = trainer.restore(c, work, 1)
  shift, scale = parallel.to_host(state.model_state['score_norm'])
  assert scale > 0 and np.isfinite(shift)    # measured on the first iteration's rollouts
  ref = parallel.to_host(state.model_state['ref'])
  from research.rlhf import evaluate as rl_eval
  sft_params = jax.tree.map(np.asarray, rl_eval.load_params(sft))
  jax.tree.map(np.testing.assert_array_equal, ref, sft_params)
  rm_params = jax.tree.map(np.asarray, rl_eval.load_params(rm[0], heads_too=True))
  jax.tree.map(np.testing.assert_array_equal, parallel.to_host(state.model_state['reward']),
               rm_params)
  # Resume from step 1 reproduces step 2.
  c.train.num_steps = 2
  ckpt_dir = os.path.join(work, 'checkpoints')
  import shutil
  shutil.rmtree(os.path.join(ckpt_dir, '2'))
  again = trainer.train(c, work)
  np.testing.assert_allclose(again['train']['score'], final['train']['score'], rtol=1e-5)
  # research.evaluate on the PPO run: its held-out eval (sampled responses: over 2 keys, with
  # an s.e.) and text metrics of samples drawn from the checkpoint, true reward included.
  from research import evaluate
  result = evaluate.evaluate_run(work, num_samples=4, num_draws=2)
  held, m = result['heldout'], result['metrics']
  assert {'true_reward', 'true_reward_se', 'kl', 'score'} <= set(held)
  assert held['num_draws'] == 2 and np.isfinite(held['kl_se'])
  assert {'true_reward', 'distinct_2', 'repetition_4', 'train_overlap_chars'} <= set(m)
  assert 'true_reward' in evaluate.format_table(result)


def tiny_dpo(data_dir, store, sft):
  c = _common(load_config('dpo_shakespeare_sentiment'), data_dir)
  c.data.records = store
  c.data.seq_len = 48
  c.init_from.workdir = sft
  c.dpo.beta = 0.5
  c.optimizer.lr = 3e-3
  c.optimizer.schedule.warmup_steps = 1
  c.train.update(batch_size=8, num_steps=20, eval_every=20, checkpoint_every=20)
  c.eval.batch_size = 8
  c.sample.max_new_tokens = 8
  return c


def test_dpo_starts_at_zero_and_learns_the_pairs(data_dir, store, sft, tmp_path):
  c = tiny_dpo(data_dir, store, sft)
  configs.validate(c, 2)
  final = trainer.train(c, str(tmp_path))
  train = _logged(tmp_path)
  # Step 1's loss is computed before any update: the policy is the reference, margin 0.
  np.testing.assert_allclose(train[0]['loss'], np.log(2), rtol=1e-5)
  np.testing.assert_allclose(train[0]['margin'], 0.0, atol=1e-6)
  assert final['eval']['accuracy'] >= 0.9
  assert final['eval']['margin'] > 0


def test_frontier_evaluator(sft, rm, tmp_path):
  """research.rlhf.evaluate: one row per checkpoint; the reference against itself has KL 0;
  the true reward is the sentiment score of the decoded replies; the plot is written."""
  from research.rlhf import evaluate as rl_eval
  rows = rl_eval.frontier(sft, [sft], reward=rm[0], num_prompts=6, response_len=4,
                          prompt_len=16, out=str(tmp_path))
  assert [r['step'] for r in rows] == rl_eval.checkpoint_steps(sft) == [4]
  r = rows[0]
  assert r['kl'] == pytest.approx(0.0, abs=1e-6)
  assert 0 < r['response_length'] <= 4 and np.isfinite(r['rm_score'])
  from research.rlhf import sentiment
  assert r['true_reward'] == pytest.approx(float(np.mean(sentiment.scores(r['texts']))))
  assert os.path.getsize(os.path.join(tmp_path, 'frontier.png')) > 1000
  with open(os.path.join(tmp_path, 'frontier.jsonl')) as f:
    assert len(f.readlines()) == 1


def test_best_of_n_curve(sft, rm):
  """research.rlhf.evaluate --best_of: n = 1, 2, 4 of the reference by the proxy; n = 1 is the
  reference itself (the mean over every sample), the proxy's pick only gets better with n, and
  the KL is the closed form."""
  from research.rlhf import evaluate as rl_eval
  rows = rl_eval.best_of_n_curve(sft, rm[0], n_max=4, num_prompts=3, response_len=4,
                                 prompt_len=16, true_reward='gold')
  assert [r['n'] for r in rows] == [1, 2, 4]
  assert [r['kl'] for r in rows] == [best_of_n.kl(n) for n in (1, 2, 4)] and rows[0]['kl'] == 0
  proxy = [r['rm_score'] for r in rows]
  assert proxy[0] <= proxy[1] <= proxy[2] and proxy[0] < proxy[2]
  assert all(np.isfinite(r['true_reward']) and r['true_reward_se'] >= 0 for r in rows)
