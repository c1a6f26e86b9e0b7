"""The one run launcher under `research.seeds` and `research.sweep`: runs as subprocesses.

Each job is an ordinary `python -m research.main` run in its own workdir (stdout and stderr
appended to WORKDIR/run.log), at most `parallel` at a time. A rerun resumes an unfinished job
from its checkpoints (the harness does that), so the status a launcher reports is about
whether the run *reached its last step*:

  done       exit 0 and final_metrics.json at the config's last step, not preempted
  preempted  exit 0 before the last step (a signal reached it; it saved and resumes on rerun)
  timeout    stopped by this launcher after `timeout` seconds (SIGTERM: it saves; SIGKILL
             after GRACE_S more)
  failed     any other exit (a config error exits 2, a diverged run 1), its last log line kept
  not run    never started: the launcher itself was stopped first

SIGTERM or SIGINT to the launcher stops launching and forwards SIGTERM to every running job,
which checkpoints and exits; the launcher then reports them and returns. A launcher killed
outright (SIGKILL) cannot forward anything: its runs ask Linux for SIGTERM when it dies
(`PR_SET_PDEATHSIG`, set by research.main when started by a launcher), so killing a sweep never
leaves its runs behind.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Hashable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACE_S = 120.0  # after a timeout's SIGTERM, time to checkpoint before SIGKILL
_ERROR_LINE = re.compile(r'^((config |flag )?error: |[\w.]*(Error|Exception|Interrupt)\b)')


@dataclasses.dataclass(frozen=True)
class Job:
  key: Hashable                     # seed k, trial i
  workdir: str
  args: tuple[str, ...]             # research.main's arguments after --workdir
  num_steps: int | None = None      # its last step (None: read from its config.json)


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def finished(run_dir: str, num_steps: int | None = None) -> bool:
  """Whether the run in `run_dir` reached `num_steps` (default: its own config.json's) and was
  not preempted."""
  final = read_json(os.path.join(run_dir, 'final_metrics.json'))
  if final is None or final.get('preempted'):
    return False
  if num_steps is None:
    config = read_json(os.path.join(run_dir, 'config.json')) or {}
    num_steps = config.get('train', {}).get('num_steps')
  return num_steps is not None and final.get('step') == num_steps


def last_line(path: str) -> str:
  """The error a run's log ends with: research.main's one-line errors or a traceback's last line
  ('ValueError: ...'), not the interpreter's shutdown warnings after it; else its last line."""
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - 65536))
      tail = f.read().decode('utf-8', 'replace')
  except OSError:
    return ''
  lines = [l.strip() for l in tail.splitlines() if l.strip()]
  errors = [l for l in lines if _ERROR_LINE.match(l)]
  return (errors or lines or [''])[-1][:300]


# research.main reads this: a run started by a launcher gets SIGTERM (and so checkpoints and
# exits) when the launcher dies, even by SIGKILL, which no handler can forward.
PARENT_ENV = 'GENLAB_LAUNCHER_PID'


def child_env(parallel: int) -> dict:
  env = dict(os.environ)
  env[PARENT_ENV] = str(os.getpid())
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, env.get('PYTHONPATH')]))
  if parallel > 1:  # several processes on one accelerator: share its memory instead of 75% each
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / parallel:.2f}')
  return env


def _print(msg: str) -> None:
  print(msg, flush=True)


def run(jobs: Sequence[Job], parallel: int = 1, timeout: float = 0.0, label: str = 'run',
        say: Callable[[str], None] = _print) -> dict:
  """Runs the jobs (`parallel` at a time); returns key -> {'status', 'exit_code', 'last_line',
  'wall_s'} in the jobs' order, the statuses of the module docstring."""
  results, queue, running, stopping = {}, list(jobs), {}, []

  def on_signal(signum, frame):  # stop launching; let running jobs checkpoint and exit
    del frame
    stopping.append(signum)
    for proc, *_ in running.values():
      proc.send_signal(signal.SIGTERM)
  previous = {}
  for s in (signal.SIGTERM, signal.SIGINT):
    try:
      previous[s] = signal.signal(s, on_signal)
    except ValueError:  # not the main thread: no forwarding
      pass
  env = child_env(parallel)
  try:
    while queue or running:
      while queue and len(running) < parallel and not stopping:
        job = queue.pop(0)
        os.makedirs(job.workdir, exist_ok=True)
        cmd = [sys.executable, '-m', 'research.main', f'--workdir={job.workdir}', *job.args]
        log_path = os.path.join(job.workdir, 'run.log')
        log = open(log_path, 'a')
        log.write(f'=== {datetime.datetime.now().isoformat(timespec="seconds")}: '
                  f'{shlex.join(cmd[1:])}\n')
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        running[job.key] = (proc, log, time.monotonic(), [None], job)
        say(f'{label} {job.key}: started (log: {log_path})')
      if stopping and queue:
        results |= {job.key: {'status': 'not run'} for job in queue}
        queue = []
      time.sleep(0.2)
      for key, (proc, log, start, term_at, job) in list(running.items()):
        now = time.monotonic()
        if proc.poll() is None:
          if timeout and term_at[0] is None and now - start > timeout:
            proc.send_signal(signal.SIGTERM)  # the harness saves at the next step, exits 0
            term_at[0] = now
          elif term_at[0] is not None and now - term_at[0] > GRACE_S:
            proc.kill()
          continue
        log.close()
        del running[key]
        if proc.returncode == 0 and finished(job.workdir, job.num_steps):
          status = 'done'
        elif term_at[0] is not None:
          status = 'timeout'
        elif proc.returncode == 0:
          status = 'preempted'  # a signal reached it: checkpointed, resumes on rerun
        else:
          status = 'failed'
        results[key] = {'status': status, 'exit_code': proc.returncode, 'wall_s': now - start,
                        'last_line': last_line(os.path.join(job.workdir, 'run.log'))}
        say(f'{label} {key}: {status} (exit {proc.returncode}, {now - start:.0f} s)'
            + ('' if status == 'done' else f': {results[key]["last_line"]}'))
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
  return {job.key: results[job.key] for job in jobs}
