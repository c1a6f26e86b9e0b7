"""A tiny DDPM U-Net on the 8x8 sklearn digits: a minute on CPU; the tests build on it.

  python -m research.main --config=experiments/diffusion_digits/config.py --workdir=RUN
  (any process: --config.diffusion.process=vdm --config.diffusion.schedule=learned, or edm)
"""
from research import configs


def get_config():
  config = configs.defaults('diffusion')
  config.data.name = 'digits'
  config.model.arch = 'unet'
  config.model.channels = 16
  config.model.channel_mults = '1,2'      # 8 -> 4
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = '4'
  config.model.dropout = 0.0
  config.diffusion.process = 'ddpm'
  config.diffusion.num_timesteps = 1000
  config.optimizer.lr = 2e-3
  config.optimizer.schedule.name = 'warmup_cosine'
  config.optimizer.schedule.warmup_steps = 100
  config.optimizer.schedule.end_value = 0.1
  config.optimizer.ema_decay = 0.99
  config.train.batch_size = 64
  config.train.num_steps = 1000
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.sample_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.batch_size = 100          # 300 test digits: 3 batches
  config.eval.num_samples = 64
  config.sampler.name = 'ddim'
  config.sampler.steps = 50
  return config
