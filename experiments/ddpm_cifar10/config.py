"""DDPM on CIFAR-10 with Ho et al. (2020)'s published hyperparameters (App. B), for TPU/GPU.

35.7M-parameter U-Net (128 channels, multipliers 1,2,2,2, two residual blocks per resolution,
self-attention at 16x16, dropout 0.1), T = 1000 linear betas 1e-4..0.02, eps prediction with
L_simple, Adam 2e-4 with 5,000 warmup steps, batch 128, gradient clipping at 1, EMA 0.9999,
random horizontal flips, 800k steps. Reads the standard TFDS catalog (needs `pip install -e
.[tf]` and network access to prepare `cifar10` once):

  python -m research.main --config=experiments/ddpm_cifar10/config.py --workdir=RUN

Published: FID 3.17, Inception score 9.46, NLL <= 3.70 bits/dim (Ho et al. 2020, Table 1).
"""
from research import configs


def get_config():
  config = configs.defaults('diffusion')
  config.data.name = 'cifar10'
  config.data.source = 'tfds'
  config.data.augment.flip = True
  config.model.arch = 'unet'
  config.model.channels = 128
  config.model.channel_mults = '1,2,2,2'
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = '16'
  config.model.dropout = 0.1
  config.model.conv_impl = 'xla'
  config.diffusion.process = 'ddpm'
  config.diffusion.num_timesteps = 1000
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.02
  config.diffusion.target = 'eps'
  config.optimizer.name = 'adam'
  config.optimizer.lr = 2e-4
  config.optimizer.schedule.name = 'warmup_linear'
  config.optimizer.schedule.warmup_steps = 5000
  config.optimizer.schedule.end_value = 1.0     # constant after warmup
  config.optimizer.clip_grad_norm = 1.0
  config.optimizer.ema_decay = 0.9999
  config.train.batch_size = 128
  config.eval.batch_size = 512       # divides by 8, 16, 32 ... devices (the last batch is padded)
  config.train.num_steps = 800_000
  config.train.log_every = 1000
  config.train.eval_every = 50_000
  config.train.sample_every = 50_000
  config.train.checkpoint_every = 10_000
  config.eval.num_samples = 256
  config.sampler.name = 'ddpm'
  return config
