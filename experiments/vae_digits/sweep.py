"""Sweep of vae_digits over the learning rate and the KL weight beta (random search by default;
--method=optuna for TPE). Metric: held-out negative ELBO (nats; eval always uses beta 1).

  python -m research.sweep --sweep=experiments/vae_digits/sweep.py \
      --workdir=workdirs/sweeps/vae_digits --parallel=2 [--method=optuna]
"""
from research.sweep import loguniform, uniform


def get_sweep():
  return {
      'config': 'experiments/vae_digits/config.py',
      'metric': 'eval.neg_elbo',
      'mode': 'min',
      'method': 'random',
      'num_trials': 12,
      'space': {
          'optimizer.lr': loguniform(1e-4, 3e-2),
          'objective.beta': uniform(0.25, 2.0),
      },
      'overrides': {           # a short budget per trial
          'train.num_steps': 300,
          'train.eval_every': 300,
          'train.sample_every': 300,
          'train.checkpoint_every': 100,
          'eval.iwae_k': 1,
          'eval.num_samples': 0,
      },
      'seed': 0,
  }
