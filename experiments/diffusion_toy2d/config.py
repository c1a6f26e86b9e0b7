"""DDPM on 2-D toy data with an MLP denoiser: the whole diffusion stack in ~4 minutes on a CPU.

  python -m research.main --config=experiments/diffusion_toy2d/config.py:ring8 --workdir=RUN
  (ring8 | grid25 | swiss_roll)

Samples are evaluated by mode coverage (PacGAN protocol: 2,500 samples, modes captured, share
of high-quality samples, reverse KL) with `python -m research.evaluate --workdir=RUN`.
"""
from research import configs


def get_config(dataset: str = 'ring8'):
  config = configs.defaults('diffusion')
  config.data.name = dataset
  config.model.arch = 'mlp'
  config.model.hidden = 256
  config.model.depth = 3
  config.model.dropout = 0.0
  config.diffusion.process = 'ddpm'
  config.diffusion.num_timesteps = 1000
  config.diffusion.target = 'eps'
  config.optimizer.lr = 1e-3
  config.optimizer.schedule.name = 'warmup_cosine'
  config.optimizer.schedule.warmup_steps = 200
  config.optimizer.schedule.end_value = 0.05
  config.optimizer.ema_decay = 0.999
  config.train.batch_size = 256
  config.train.num_steps = 10_000
  config.train.log_every = 500
  config.train.eval_every = 5_000
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 1000
  config.eval.num_samples = 2500          # the PacGAN protocol's sample count
  config.eval.bpd_timesteps = 0           # continuous 2-D data: no bits/dim
  config.sampler.name = 'ddpm'            # 1000 ancestral steps
  return config
