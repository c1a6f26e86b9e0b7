"""PacGAN's ring-8 experiment (Lin et al. 2018, Table 1): 8 Gaussians on the unit circle.

  python -m research.main --config=experiments/gan_ring8/config.py --workdir=RUN     # GAN
  python -m research.main --config=experiments/gan_ring8/config.py:2 --workdir=RUN   # PacGAN2
  python -m research.seeds --config=experiments/gan_ring8/config.py:2 --workdir=RUNS --seeds=0,1,2,3,4

The protocol of the paper's code: 100k training points (std 0.01), 100 packed examples per step (so
100 x pack points), Adam lr 1e-4 with beta1 0.8 for both players, one simultaneous update of both
per step (the ALI training rule: both gradients from one forward pass); generator: 2-D Gaussian
latent, 4 hidden layers of 400 ReLU units with batch norm; discriminator: 3 maxout layers (5 pieces,
200 units). Each eval reports modes captured, high-quality fraction and reverse KL on 2,500 samples.
The paper trains 400 epochs (400k steps); our budget is `train.num_steps` (see the README table for
what it was).
"""
from research import configs


def get_config(pack: str = '1'):
  config = configs.defaults('gan')
  config.data.name = 'ring8'
  config.model.arch = 'mlp'
  config.model.latent_dim = 2
  config.gan.loss = 'ns'
  config.gan.pack = int(pack)
  config.gan.update_rule = 'simultaneous'
  config.optimizer.lr = 1e-4
  config.optimizer.b1 = 0.8
  config.train.batch_size = 100 * int(pack)
  config.train.num_steps = 50_000
  config.train.divergence_limit = 1e6   # a GAN loss this large has diverged: stop
  config.train.log_every = 1000
  config.train.eval_every = 10_000
  config.train.sample_every = 50_000
  config.train.checkpoint_every = 10_000
  config.eval.batch_size = 1000 * int(pack)
  config.eval.num_samples = 2500
  return config
