"""VDM (Kingma et al. 2021) on Fashion-MNIST: continuous time, learned noise schedule, trained
on the likelihood bound in bits/dim; same U-Net as ddpm_fashion_mnist.

  python -m research.main --config=experiments/vdm_fashion_mnist/config.py --workdir=RUN
  python -m research.main --config=experiments/vdm_fashion_mnist/config.py:cpu --workdir=RUN   # README run

The log-SNR is VDM's monotone network with learned endpoints (initialised at gamma = -13.3 and
5.0); its interior is trained to minimize the variance of the diffusion loss. Samples use DDIM on
a grid uniform in t by default (any sampler works: --config.sampler.name=dpmpp_2m).
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
  config.model.conv_impl = 'auto'
  config.diffusion.process = 'vdm'
  config.diffusion.schedule = 'learned'
  config.diffusion.target = 'eps'
  config.diffusion.gamma_min = -13.3
  config.diffusion.gamma_max = 5.0
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 2e-4
  config.optimizer.weight_decay = 0.01
  config.optimizer.schedule.name = 'warmup_linear'
  config.optimizer.schedule.warmup_steps = 1000
  config.optimizer.schedule.end_value = 1.0
  config.optimizer.clip_grad_norm = 1.0
  config.optimizer.ema_decay = 0.9995
  config.train.batch_size = 128
  config.train.num_steps = 40_000
  config.train.log_every = 500
  config.train.eval_every = 10_000
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 5_000
  config.eval.batch_size = 500
  config.eval.bpd_timesteps = 4
  config.eval.best_metric = 'bpd'
  config.sampler.name = 'ddim'
  config.sampler.steps = 100
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
    raise ValueError(f"vdm_fashion_mnist: unknown variant {size!r}; use :full (default) or :cpu")
  return config
