"""EDM (Karras et al. 2022) on Fashion-MNIST: preconditioned denoiser, log-normal noise levels,
Heun sampling on the rho = 7 grid (18 steps, 35 NFE); same U-Net as ddpm_fashion_mnist.

  python -m research.main --config=experiments/edm_fashion_mnist/config.py --workdir=RUN
"""
from research import configs


def get_config():
  config = configs.defaults('diffusion')
  config.data.name = 'fashion_mnist'
  config.model.arch = 'unet'
  config.model.channels = 32
  config.model.channel_mults = '1,2,2'
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = '7'
  config.model.dropout = 0.1
  config.model.conv_impl = 'auto'
  config.diffusion.process = 'edm'
  config.diffusion.sigma_data = 0.5
  config.diffusion.p_mean = -1.2
  config.diffusion.p_std = 1.2
  config.optimizer.lr = 1e-3               # EDM's small-model rate, with warmup
  config.optimizer.schedule.name = 'warmup_linear'
  config.optimizer.schedule.warmup_steps = 2000
  config.optimizer.schedule.end_value = 1.0
  config.optimizer.ema_decay = 0.9995
  config.train.batch_size = 128
  config.train.num_steps = 40_000
  config.train.log_every = 500
  config.train.eval_every = 10_000
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 500
  config.eval.bpd_timesteps = 0            # no variational bound for EDM here
  config.sampler.name = 'heun'
  config.sampler.steps = 18
  return config
