"""End to end through the command line: train, resume, eval, sample on the tiny digits config."""
import glob
import json
import os

from tests import helpers

CONFIG = '--config=experiments/vae_digits/config.py'
SMALL = ['--config.train.num_steps=30', '--config.train.log_every=10',
         '--config.train.eval_every=15', '--config.train.sample_every=30',
         '--config.train.checkpoint_every=15', '--config.eval.iwae_k=8']


def test_train_leaves_every_artifact_then_eval_and_sample(tmp_path):
  wd = str(tmp_path / 'run')
  helpers.cli([CONFIG, f'--workdir={wd}', *SMALL])
  final = json.load(open(os.path.join(wd, 'final_metrics.json')))
  assert final['step'] == 30 and not final['preempted']
  assert final['eval']['neg_elbo'] > 0 and final['eval']['num_examples'] > 0
  assert glob.glob(os.path.join(wd, 'tb', 'events.out.tfevents.*'))
  lines = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert {l['split'] for l in lines} == {'train', 'eval'}
  assert [l['step'] for l in lines if l['split'] == 'train'] == [10, 20, 30]
  assert glob.glob(os.path.join(wd, 'samples', 'samples_*.png'))
  npz = glob.glob(os.path.join(wd, 'samples', 'samples_*.npz'))
  assert npz
  assert os.path.isdir(os.path.join(wd, 'checkpoints', '30'))

  # Rerunning the same command with more steps resumes instead of starting over.
  helpers.cli([CONFIG, f'--workdir={wd}', *SMALL[1:], '--config.train.num_steps=45'])
  lines = [json.loads(l) for l in open(os.path.join(wd, 'metrics.jsonl'))]
  assert [l['step'] for l in lines if l['split'] == 'train'] == [10, 20, 30, 40, 45]

  helpers.cli([CONFIG, f'--workdir={wd}', '--mode=eval', '--config.eval.iwae_k=8'])
  ev = json.load(open(os.path.join(wd, 'eval_45.json')))
  assert ev['iwae_nll'] <= ev['neg_elbo'] + 1.0
  helpers.cli([CONFIG, f'--workdir={wd}', '--mode=sample'])
  assert glob.glob(os.path.join(wd, 'samples', 'samples_0000045.png'))


def test_eval_without_checkpoint_is_a_clear_error(tmp_path):
  proc = helpers.cli([CONFIG, f'--workdir={tmp_path}', '--mode=eval'], check=False)
  assert proc.returncode == 2 and 'train first' in proc.stderr
