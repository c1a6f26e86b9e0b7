"""DCGAN (Radford et al. 2016) on Fashion-MNIST: non-saturating BCE, batch norm in G.

  python -m research.main --config=experiments/dcgan_fashion_mnist/config.py --workdir=RUN
  python -m research.evaluate --workdir=RUN     # Frechet distance, precision/recall, class coverage

DCGAN's optimizer (Adam 2e-4, beta1 0.5) and init (N(0, 0.02)); a 28x28 generator
(z 128 -> 7x7x128 -> 14x14x64 -> 28x28x1) and a 2-layer strided conv discriminator without batch
norm. EMA of the generator (0.999) for samples. The budget is sized for a 2-core CPU.
"""
from research import configs


def get_config():
  config = configs.defaults('gan')
  config.data.name = 'fashion_mnist'
  config.model.arch = 'dcgan'
  config.model.latent_dim = 128
  config.model.g_channels = 64
  config.model.d_channels = 64
  config.gan.loss = 'ns'
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
