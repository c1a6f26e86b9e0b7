"""WGAN-GP (Gulrajani et al. 2017) on Fashion-MNIST: Wasserstein critic with gradient penalty.

  python -m research.main --config=experiments/wgan_gp_fashion_mnist/config.py --workdir=RUN
  python -m research.evaluate --workdir=RUN

The paper's Algorithm 1 settings: lambda 10, 5 critic updates per generator update (each on its
own fifth of the batch: 64 real images per critic step), Adam 1e-4 with betas (0, 0.9). Same
networks as dcgan_fashion_mnist; the critic has no batch norm (the penalty is per example).
"""
from research import configs


def get_config():
  config = configs.defaults('gan')
  config.data.name = 'fashion_mnist'
  config.model.arch = 'dcgan'
  config.model.latent_dim = 128
  config.gan.loss = 'wgan'
  config.gan.gp_weight = 10.0
  config.gan.n_critic = 5
  config.optimizer.lr = 1e-4
  config.optimizer.b1 = 0.0
  config.optimizer.b2 = 0.9
  config.optimizer.ema_decay = 0.999
  config.train.batch_size = 320            # 5 critic steps x 64
  config.train.num_steps = 2000
  config.train.divergence_limit = 1e6   # a GAN loss this large has diverged: stop
  config.train.log_every = 100
  config.train.eval_every = 2000
  config.train.sample_every = 500
  config.train.checkpoint_every = 500
  config.eval.batch_size = 500
  config.eval.num_samples = 100
  return config
