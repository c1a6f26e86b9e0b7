"""A tiny VAE on the 8x8 sklearn digits: seconds on CPU; the harness tests run on it."""
from research import configs


def get_config():
  config = configs.defaults('vae')
  config.data.name = 'digits'
  config.data.augment.binarize = 'dynamic'  # Bernoulli likelihood needs binary pixels
  config.model.hidden = '64'                # 64 pixels: one small layer is plenty
  config.model.latent_dim = 8
  config.train.batch_size = 64
  config.train.num_steps = 500
  config.train.log_every = 50
  config.train.eval_every = 250
  config.train.sample_every = 500
  config.train.checkpoint_every = 250
  config.eval.batch_size = 100                # 300 test digits: 3 batches
  config.eval.iwae_k = 64                     # cheap at 8x8; shows the IWAE-ELBO gap
  config.eval.iwae_chunk = 64
  return config
