"""A tiny feature network on the 8x8 sklearn digits (seconds on CPU); the tests use it."""
from research import configs


def get_config():
  config = configs.defaults('classifier')
  config.data.name = 'digits'
  config.model.channels = '16,32'
  config.model.feature_dim = 64
  config.model.dropout = 0.1
  config.optimizer.lr = 3e-3
  config.train.batch_size = 64
  config.train.num_steps = 300
  config.train.log_every = 100
  config.train.eval_every = 300
  config.train.sample_every = 300
  config.train.checkpoint_every = 300
  config.eval.batch_size = 100          # 300 test digits: 3 batches
  return config
