"""The MNIST(-5k) feature network: a small CNN classifier whose penultimate layer is the feature
space of the sample-quality metrics (see experiments/features_fashion_mnist). Plain [0, 1]
images, no binarization. The packaged MNIST has 4,000 train images, so fewer steps."""
from research import configs


def get_config():
  config = configs.defaults('classifier')
  config.data.name = 'mnist'
  config.model.channels = '16,32'
  config.model.feature_dim = 128
  config.model.dropout = 0.3
  config.optimizer.lr = 2e-3
  config.optimizer.schedule.name = 'warmup_cosine'
  config.optimizer.schedule.warmup_steps = 100
  config.train.batch_size = 128
  config.train.num_steps = 1000
  config.train.log_every = 250
  config.train.eval_every = 1000
  config.train.sample_every = 1000
  config.train.checkpoint_every = 500
  config.eval.batch_size = 500
  return config
