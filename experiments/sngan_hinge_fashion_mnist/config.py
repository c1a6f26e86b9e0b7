"""SN-GAN (Miyato et al. 2018) on Fashion-MNIST: spectral norm on every discriminator layer and
the hinge loss.

  python -m research.main --config=experiments/sngan_hinge_fashion_mnist/config.py --workdir=RUN
  python -m research.evaluate --workdir=RUN

The paper's setting C (Adam 2e-4, betas (0.5, 0.999), one discriminator update per generator
update); one power iteration per discriminator step. Same networks as dcgan_fashion_mnist.
"""
from research import configs


def get_config():
  config = configs.defaults('gan')
  config.data.name = 'fashion_mnist'
  config.model.arch = 'dcgan'
  config.model.latent_dim = 128
  config.model.spectral_norm = True
  config.gan.loss = 'hinge'
  config.optimizer.lr = 2e-4
  config.optimizer.b1 = 0.5
  config.optimizer.ema_decay = 0.999
  config.train.batch_size = 64
  config.train.num_steps = 5000
  config.train.divergence_limit = 1e6   # a GAN loss this large has diverged: stop
  config.train.log_every = 100
  config.train.eval_every = 5000
  config.train.sample_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.batch_size = 500
  config.eval.num_samples = 100
  return config
