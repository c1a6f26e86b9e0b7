"""Class-conditional DDPM on Fashion-MNIST with classifier-free guidance (Ho & Salimans 2022);
otherwise as ddpm_fashion_mnist.

  python -m research.main --config=experiments/ddpm_fashion_mnist_guided/config.py --workdir=RUN
  python -m research.main --config=experiments/ddpm_fashion_mnist_guided/config.py \
      --workdir=RUN --mode=sample --config.sampler.guidance=3.0

guidance w: D = D_cond + w (D_cond - D_uncond); w = 0 is the plain conditional model. Sample
grids cycle through the 10 classes.
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
  config.model.class_conditional = True
  config.model.class_dropout = 0.1       # labels -> the null class 10% of the time
  config.sampler.name = 'ddim'
  config.sampler.steps = 50
  config.sampler.guidance = 1.0
  return config
