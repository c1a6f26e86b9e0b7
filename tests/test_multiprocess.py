"""Multi-host through jax.distributed on 127.0.0.1: 2 processes x 2 devices == 1 process x 2
devices on the same global batch (each host reads only its shard of the data)."""
import json
import os

from tests import helpers

ARGS = ['--config=experiments/vae_digits/config.py', '--config.train.num_steps=10',
        '--config.train.log_every=1', '--config.train.eval_every=10',
        '--config.train.sample_every=10', '--config.train.checkpoint_every=10',
        '--config.eval.iwae_k=0', '--cpu_devices=2']


def _losses(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  return [l['loss'] for l in lines if l['split'] == 'train'], \
         [l for l in lines if l['split'] == 'eval'][-1]


def test_two_processes_match_one_process(tmp_path):
  single = str(tmp_path / 'single')
  helpers.cli([*ARGS, f'--workdir={single}'], timeout=300)
  multi = str(tmp_path / 'multi')
  outs = helpers.cli_processes([*ARGS, f'--workdir={multi}'])
  assert '4 devices' in outs[0], outs[0][-3000:]
  l1, e1 = _losses(single)
  l2, e2 = _losses(multi)
  assert len(l1) == len(l2) == 10
  for a, b in zip(l1, l2):
    assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), (l1, l2)
  assert abs(e1['neg_elbo'] - e2['neg_elbo']) <= 1e-3 * abs(e1['neg_elbo'])
  assert e1['num_examples'] == e2['num_examples']
