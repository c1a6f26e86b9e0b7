"""Preemption and resume: 20 steps == 10 steps, SIGTERM, resume, 10 more (bitwise on CPU)."""
import json
import os
import signal

import jax
import numpy as np

from research import checkpoint, parallel, trainer
from tests import helpers


def _run(config, workdir, batches, kill_at=None):
  def on_step(step, batch):
    batches.append({k: np.array(v) for k, v in batch.items()})
    if step == kill_at:
      os.kill(os.getpid(), signal.SIGTERM)  # the real handler: saves at the step boundary
  return trainer.train(config, workdir, on_step=on_step)


def _params(config, workdir):
  exp, state, _, _ = trainer.restore(config, workdir, -1)
  return parallel.to_host(state.params), int(parallel.to_host(state.step))


def test_sigterm_then_resume_is_bitwise_identical(tmp_path):
  config = helpers.tiny_digits(num_steps=20, checkpoint_every=100, eval_every=100,
                               sample_every=100)
  straight, interrupted = [], []
  _run(config, str(tmp_path / 'a'), straight)
  first = _run(config, str(tmp_path / 'b'), interrupted, kill_at=10)
  assert first['preempted'] and first['step'] == 10
  assert len(interrupted) == 10
  second = _run(config, str(tmp_path / 'b'), interrupted)
  assert second['step'] == 20 and not second['preempted']
  assert len(interrupted) == len(straight) == 20
  for a, b in zip(straight, interrupted):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  pa, sa = _params(config, str(tmp_path / 'a'))
  pb, sb = _params(config, str(tmp_path / 'b'))
  assert sa == sb == 20
  jax.tree.map(np.testing.assert_array_equal, pa, pb)
  # Both leave the same final train metrics in their logs.
  lines = [json.loads(l) for l in open(tmp_path / 'b' / 'metrics.jsonl')]
  assert any(l['step'] == 20 and l['split'] == 'train' for l in lines)


def _evals(workdir) -> dict:
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return {l['step']: {k: v for k, v in l.items() if 'per_sec' not in k}
          for l in lines if l['split'] == 'eval'}


def test_a_preempted_step_defers_its_eval_and_samples_to_the_resumed_run(tmp_path):
  """The signal arrives before an eval/sample step: the run saves and stops without spending
  the preemption's grace period on them; the resumed run does them first, so its log and
  samples equal an uninterrupted run's."""
  config = helpers.tiny_digits(num_steps=20, checkpoint_every=100, eval_every=10,
                               sample_every=10)
  straight, cut = str(tmp_path / 'a'), str(tmp_path / 'b')
  _run(config, straight, [])
  first = _run(config, cut, [], kill_at=10)
  assert first['preempted'] and first['step'] == 10 and not first['eval']
  assert not _evals(cut)
  assert not list((tmp_path / 'b').glob('samples/*_0000010.*'))
  ckpt = checkpoint.Checkpointer(os.path.join(cut, 'checkpoints'), read_only=True)
  assert ckpt.read_meta(10)['pending'] == ['eval', 'sample']
  ckpt.close()
  second = _run(config, cut, [])
  assert second['step'] == 20 and second['eval']
  assert _evals(cut) == _evals(straight) and sorted(_evals(cut)) == [10, 20]
  for f in sorted((tmp_path / 'a' / 'samples').glob('*.npz')):
    a, b = np.load(f), np.load(tmp_path / 'b' / 'samples' / f.name)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_restore_onto_a_different_device_count(tmp_path):
  config = helpers.tiny_digits(num_steps=5)
  trainer.train(config, str(tmp_path))  # 2 devices (tests run with 2)
  one = parallel.make_mesh(jax.devices()[:1])
  exp = trainer.build(config, one)
  fresh = trainer.init_state(exp, trainer._train_iterator(config))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), read_only=True)
  state, _ = ckpt.restore(None, fresh, jax.random.key(0))
  assert int(parallel.to_host(state.step)) == 5
  assert state.params is not None
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.mesh.size == 1
  # The restored state trains on the new mesh.
  batch = next(trainer._train_iterator(config))
  state, metrics = exp.train_step(state, parallel.host_batch_to_global(batch, one),
                                  jax.random.key(1))
  assert np.isfinite(parallel.to_host(metrics['loss']))


def test_keeps_latest_k_plus_best(tmp_path):
  config = helpers.tiny_digits(num_steps=12, checkpoint_every=2, eval_every=2, keep_checkpoints=2)
  config.eval.best_metric = 'neg_elbo'
  config.train.async_checkpoints = False
  trainer.train(config, str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'checkpoints'), read_only=True)
  steps = sorted(ckpt.manager.all_steps())
  assert steps[-2:] == [10, 12]
  evals = {l['step']: l['neg_elbo'] for l in map(json.loads, open(tmp_path / 'metrics.jsonl'))
           if l['split'] == 'eval'}
  best = min(evals, key=evals.get)
  assert best in steps
  assert len(steps) <= 3


def test_transfer_params_maps_paths_and_skips_shape_mismatch():
  target = {'enc': {'w': np.zeros((2, 3)), 'b': np.zeros(3)}, 'head': {'w': np.zeros((3, 4))}}
  source = {'encoder': {'w': np.ones((2, 3)), 'b': np.ones(3)}, 'head': {'w': np.ones((3, 5))}}
  new, report = checkpoint.transfer_params(target, source, '^enc/=encoder/')
  np.testing.assert_array_equal(new['enc']['w'], 1)
  np.testing.assert_array_equal(new['enc']['b'], 1)
  np.testing.assert_array_equal(new['head']['w'], 0)  # shape differs: stays fresh
  assert sorted(report['copied']) == ['enc/b', 'enc/w'] and report['kept'] == ['head/w']


def test_transfer_learning_with_a_frozen_subtree(tmp_path):
  source = helpers.tiny_digits(num_steps=10)
  trainer.train(source, str(tmp_path / 'src'))
  src_params, _ = _params(source, str(tmp_path / 'src'))

  target = helpers.tiny_digits(num_steps=5)
  target.seed = 7  # a different init: transferred values must come from the source run
  target.init_from.workdir = str(tmp_path / 'src')
  target.optimizer.frozen = '^encoder/'
  trainer.train(target, str(tmp_path / 'dst'))
  dst_params, step = _params(target, str(tmp_path / 'dst'))
  assert step == 5
  # Frozen encoder: exactly the source run's weights after 5 more steps.
  jax.tree.map(np.testing.assert_array_equal, src_params['encoder'], dst_params['encoder'])
  # Trainable decoder: started from the source and moved on.
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), src_params['decoder'],
                       dst_params['decoder'])
  assert max(jax.tree.leaves(moved)) > 0


def test_rerunning_a_finished_run_still_reports_its_eval(tmp_path):
  """A run killed after its final checkpoint resumes at num_steps: no step runs, but the final
  metrics still hold the finished run's eval (sweeps read them)."""
  config = helpers.tiny_digits(num_steps=4)
  config.eval.num_samples = 0
  first = trainer.train(config, str(tmp_path))
  again = trainer.train(config, str(tmp_path))
  assert again['step'] == 4 and again['eval']
  np.testing.assert_allclose(again['eval']['neg_elbo'], first['eval']['neg_elbo'], rtol=1e-5)
