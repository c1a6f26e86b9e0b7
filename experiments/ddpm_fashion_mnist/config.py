"""DDPM (Ho et al. 2020) on Fashion-MNIST: a small U-Net, T = 1000 linear betas, eps target.

  python -m research.main --config=experiments/ddpm_fashion_mnist/config.py --workdir=RUN
  python -m research.main --config=experiments/ddpm_fashion_mnist/config.py:cpu --workdir=RUN   # README run
  python -m research.diffusion.sampler_table --workdir=RUN       # the README sampler table

The U-Net (32 channels, multipliers 1,2,2 at 28/14/7, 2 residual blocks per resolution,
attention at 7x7 and in the middle, dropout 0.1; 2.3M parameters) is Ho et al.'s CIFAR-10 design
at a quarter of the width. Budget: 40k steps at batch 128 (~100 epochs), Adam 2e-4 after 1k warmup
steps, EMA 0.9995. Sized for one GPU (minutes); on a 2-core CPU a step takes seconds, so cut
train.num_steps for a smoke run. The default sampler is Ho et al.'s 1000-step ancestral sampler;
override with e.g. --config.sampler.name=ddim --config.sampler.steps=50.
"""
from research import configs


def get_config(size: str = 'full'):
  config = configs.defaults('diffusion')
  config.data.name = 'fashion_mnist'
  config.model.arch = 'unet'
  config.model.channels = 32
  config.model.channel_mults = '1,2,2'
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = '7'
  config.model.dropout = 0.1
  config.model.conv_impl = 'auto'        # xla on GPU/TPU, the faster CPU form on CPU
  config.diffusion.process = 'ddpm'
  config.diffusion.num_timesteps = 1000
  config.diffusion.schedule = 'linear'
  config.diffusion.target = 'eps'
  config.optimizer.lr = 2e-4
  config.optimizer.schedule.name = 'warmup_linear'
  config.optimizer.schedule.warmup_steps = 1000
  config.optimizer.schedule.end_value = 1.0   # constant after warmup, as Ho et al.
  config.optimizer.clip_grad_norm = 1.0
  config.optimizer.ema_decay = 0.9995
  config.train.batch_size = 128
  config.train.num_steps = 40_000
  config.train.log_every = 500
  config.train.eval_every = 10_000
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 500
  config.eval.num_samples = 64
  config.eval.bpd_timesteps = 4            # bits/dim: 4 stratified timesteps per test image
  config.eval.best_metric = 'bpd'
  config.sampler.name = 'ddpm'
  if size == 'cpu':
    # The README's CPU run: a quarter of the U-Net's FLOPs (16 channels, one residual block per
    # level, 0.28M parameters, ~3 ms per image forward on one core), a short budget with a
    # higher lr and a faster EMA. One process uses one core here, so DDPM and VDM train side by side.
    config.model.channels = 16
    config.model.num_res_blocks = 1
    config.model.dropout = 0.0
    config.optimizer.lr = 5e-4
    config.optimizer.schedule.warmup_steps = 200
    config.optimizer.ema_decay = 0.999
    config.train.batch_size = 64
    config.train.num_steps = 4_000
    config.train.log_every = 100
    config.train.eval_every = 4_000
    config.train.sample_every = 4_000
    config.train.checkpoint_every = 500
    config.eval.num_samples = 16
  elif size != 'full':
    raise ValueError(f"ddpm_fashion_mnist: unknown variant {size!r}; use :full (default) or :cpu")
  return config
