"""The multi-host launch scripts (scripts/launch/): shell syntax, the SLURM job's layout, the TPU
script's gcloud commands (dry run), and real multi-process runs on this machine: the local
launcher, and the SLURM job under a stand-in `srun` so that jax.distributed.initialize() takes
the same SLURM auto-detection path it takes on a cluster."""
import json
import os
import re
import subprocess
import sys

import pytest

from tests import helpers

LAUNCH = os.path.join(helpers.ROOT, 'scripts', 'launch')
TPU = os.path.join(LAUNCH, 'tpu_pod.sh')
SLURM = os.path.join(LAUNCH, 'slurm_gpu.sbatch')
LOCAL = os.path.join(LAUNCH, 'local_multiprocess.sh')
STEPS = 20
TINY = [f'--config.train.num_steps={STEPS}', f'--config.train.eval_every={STEPS}',
        f'--config.train.sample_every={STEPS}', f'--config.train.checkpoint_every={STEPS}',
        '--config.train.batch_size=32', '--config.eval.batch_size=100']

# What srun does for one step on one node, for the test: SLURM_NTASKS copies of the command, each
# with the per-task variables srun sets. srun's own options are ignored.
FAKE_SRUN = r'''#!/usr/bin/env bash
while [[ $# -gt 0 && $1 == --* ]]; do shift; done
if [[ -n "${FAKE_SRUN_PRINT_ENV:-}" ]]; then
  echo "JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-unset} SRUN_CPUS_PER_TASK=${SRUN_CPUS_PER_TASK:-unset} CMD=$*"
  exit 0
fi
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=localhost SLURM_STEP_NUM_NODES=1 "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
'''


def _fake_srun(tmp_path):
  bindir = tmp_path / 'bin'
  bindir.mkdir()
  srun = bindir / 'srun'
  srun.write_text(FAKE_SRUN)
  srun.chmod(0o755)
  return str(bindir)


def _run(cmd, env=None, timeout=300):
  """Runs under coreutils `timeout`, which stops the whole process group (the script and the
  Python processes it started) when time is up."""
  return subprocess.run(['timeout', '-k', '30', str(timeout), *cmd], cwd=helpers.ROOT,
                        env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                        timeout=timeout + 60)


def _assert_finished_run(workdir, num_processes, num_devices, out):
  final = json.load(open(os.path.join(workdir, 'final_metrics.json')))
  assert final['step'] == STEPS and not final['preempted'], final
  assert final['num_devices'] == num_devices, final
  checkpoints = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert max(checkpoints) == STEPS, checkpoints
  # Every process saved its own data-iterator position into the one checkpoint.
  data = sorted(os.listdir(os.path.join(workdir, 'checkpoints', str(STEPS), 'data')))
  assert [f'process_{i}-of-{num_processes}.json' for i in range(num_processes)] == \
      [f for f in data if f.startswith('process_')], data
  assert re.search(rf'\b{num_devices} devices\b.*global batch 32', out), out[-3000:]


def _printed_commands(stderr):
  """The gcloud commands a dry run printed ('+ gcloud ...', a quoted --command may span lines)."""
  cmds = []
  for line in stderr.splitlines():
    if line.startswith('+ '):
      cmds.append(line)
    elif cmds and not line.startswith(('started on', '  gcloud')):
      cmds[-1] += '\n' + line
  return [c for c in cmds if c.startswith('+ gcloud compute tpus tpu-vm ')]


def test_shell_syntax():
  for path in (TPU, SLURM, LOCAL):
    proc = subprocess.run(['bash', '-n', path], capture_output=True, text=True)
    assert proc.returncode == 0, (path, proc.stderr)
    assert os.access(path, os.X_OK), f'{path} is not executable'


def test_sbatch_directives_one_task_per_gpu():
  lines = open(SLURM).read().splitlines()
  assert lines[0].startswith('#!')
  # sbatch reads #SBATCH lines only up to the first command.
  first_command = next(i for i, l in enumerate(lines[1:], 1) if l.strip() and
                       not l.lstrip().startswith('#'))
  directives = {}
  for i, line in enumerate(lines):
    if line.startswith('#SBATCH'):
      assert i < first_command, f'#SBATCH after the first command (line {i + 1}): {line}'
      m = re.fullmatch(r'#SBATCH --([a-z-]+)(?:=(\S+))?', line)
      assert m, f'unparsed directive: {line}'
      directives[m.group(1)] = m.group(2)
  for key in ('nodes', 'ntasks-per-node', 'gpus-per-node', 'time', 'signal'):
    assert key in directives, (key, directives)
  # JAX's SLURM detection: task i of a node drives GPU SLURM_LOCALID=i, so every task must see
  # all the node's GPUs: as many tasks as GPUs per node, and no per-task GPU binding.
  assert directives['ntasks-per-node'] == directives['gpus-per-node']
  assert 'gpus-per-task' not in directives
  assert re.fullmatch(r'TERM@\d+', directives['signal'])
  body = '\n'.join(lines[first_command:])
  assert re.search(r'^srun .*\\\n\s+"\$PYTHON" -m research\.main --distributed ', body, re.M)
  assert '"$@"' in body


def test_sbatch_one_process_per_node_sees_every_gpu(tmp_path):
  """--ntasks-per-node=1 on 4-GPU nodes: the script hands that process all 4 GPUs."""
  env = {'PATH': _fake_srun(tmp_path) + os.pathsep + os.environ['PATH'],
         'FAKE_SRUN_PRINT_ENV': '1', 'SLURM_NTASKS_PER_NODE': '1', 'SLURM_GPUS_ON_NODE': '4',
         'SLURM_CPUS_PER_TASK': '16', 'REPO_DIR': helpers.ROOT,
         'CONFIG': 'experiments/vae_mnist/config.py'}
  proc = _run(['bash', SLURM, '--config.train.batch_size=64'], env=env, timeout=60)
  assert proc.returncode == 0, proc.stderr
  assert 'JAX_LOCAL_DEVICE_IDS=0,1,2,3 SRUN_CPUS_PER_TASK=16' in proc.stdout, proc.stdout
  assert '-m research.main --distributed --config=experiments/vae_mnist/config.py' in proc.stdout
  assert f'--workdir={helpers.ROOT}/workdirs/vae_mnist --config.train.batch_size=64' in proc.stdout
  env['SLURM_NTASKS_PER_NODE'] = '4'  # one task per GPU: JAX picks each task's GPU itself
  proc = _run(['bash', SLURM], env=env, timeout=60)
  assert proc.returncode == 0 and 'JAX_LOCAL_DEVICE_IDS=unset' in proc.stdout, proc.stdout
  env['CONFIG'] = ''  # no config: the job stops at once, saying what to set
  proc = _run(['bash', SLURM], env=env, timeout=60)
  assert proc.returncode != 0 and 'set CONFIG=' in proc.stderr, proc.stderr


def test_tpu_pod_dry_run_prints_every_gcloud_command():
  env = {'DRY_RUN': '1', 'TPU_NAME': 'pod-x', 'ZONE': 'us-west4-a',
         'ACCELERATOR_TYPE': 'v5litepod-16', 'SPOT': '1', 'PROJECT': 'proj-x'}
  out = {}
  for sub in (['create'], ['setup'], ['stop'], ['delete'],
              ['train', 'experiments/vae_mnist/config.py', '/mnt/shared/vae mnist',
               '--config.train.batch_size=256']):
    proc = _run(['bash', TPU, *sub], env=env, timeout=60)
    assert proc.returncode == 0, (sub, proc.stderr)
    cmds = _printed_commands(proc.stderr)
    assert cmds, (sub, proc.stderr)
    assert all('--zone=us-west4-a' in c and '--project=proj-x' in c for c in cmds), cmds
    out[sub[0]] = cmds
  assert out['create'] == ['+ gcloud compute tpus tpu-vm create pod-x --zone=us-west4-a '
                           '--project=proj-x --accelerator-type=v5litepod-16 '
                           '--version=v2-alpha-tpuv5-lite --spot']
  assert any(' scp ' in c and c.endswith('--worker=all') for c in out['setup'])
  assert any("pip install -q -e .\\[data\\,tf\\] jax\\[tpu\\]\\>=0.10.2\\,\\<0.12" in c
             for c in out['setup']), out['setup']
  assert out['stop'][0].endswith("--worker=all --command='pkill -TERM -f '\\''python -m "
                                 "research.main'\\'' || true'"), out['stop']
  assert out['delete'][0].endswith('delete pod-x --zone=us-west4-a --project=proj-x --quiet')
  (train,) = out['train']
  assert ' ssh pod-x ' in train and '--worker=all' in train
  assert ("--command='cd ~/genlab && .venv/bin/python -m research.main --distributed "
          "--config=experiments/vae_mnist/config.py --workdir=/mnt/shared/vae\\ mnist "
          "--config.train.batch_size=256'") in train
  assert _run(['bash', TPU, 'train', 'only-a-config'], env=env, timeout=60).returncode == 2


def test_local_multiprocess_two_processes(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = _run(['bash', LOCAL, '2', 'experiments/vae_digits/config.py', workdir, *TINY],
              env={'PYTHON': sys.executable})
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-5000:]
  assert 'all 2 processes exited 0' in out
  assert '[process 0]' in out and '[process 1]' in out
  _assert_finished_run(workdir, num_processes=2, num_devices=4, out=out)


def test_slurm_job_under_stand_in_srun(tmp_path):
  """The sbatch script's own command, 2 tasks on this machine: --distributed finds the
  coordinator, process count and ids from the SLURM variables (2 tasks x 2 CPU devices)."""
  workdir = str(tmp_path / 'run')
  env = {'PATH': _fake_srun(tmp_path) + os.pathsep + os.environ['PATH'],
         'SLURM_JOB_ID': '4242', 'SLURM_NTASKS': '2', 'SLURM_JOB_NUM_NODES': '1',
         'JAX_COORDINATOR_PORT': str(helpers.free_port()), 'REPO_DIR': helpers.ROOT,
         'CONFIG': 'experiments/vae_digits/config.py', 'WORKDIR': workdir,
         'PYTHON': sys.executable}
  for k in ('SLURM_NTASKS_PER_NODE', 'SLURM_GPUS_ON_NODE', 'SLURM_CPUS_PER_TASK'):
    env[k] = ''
  proc = _run(['bash', SLURM, '--cpu_devices=2', *TINY], env=env)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-5000:]
  _assert_finished_run(workdir, num_processes=2, num_devices=4, out=out)
