"""nanoGPT's own CPU recipe for shakespeare_char, as the same-shape baseline of lm_shakespeare_char.

  python -m research.main --config=experiments/lm_nanogpt_shakespeare_char/config.py --workdir=RUN
  # the same recipe on our by-play split (three whole plays never seen):
  ... --config.data.name=shakespeare

nanoGPT's README (karpathy/nanoGPT, "baby GPT" on a CPU) trains with
  python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
      --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
      --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
and reports a validation loss of about 1.88 nats per character (2.71 bits/char). This config is
that recipe: 4 layers x 4 heads x width 128, context 64, batch 12, 2,000 steps, no dropout, AdamW
lr 1e-3 (100 warmup steps, cosine to 1e-4 at step 2,000), beta2 0.99, weight decay 0.1 on
matrices only, gradient clipping at 1. Its data split is nanoGPT's kind: `shakespeare_tail` is our
37 plays as one text, train = the first 90% of the characters, eval = the last 10%.

What still differs from nanoGPT (so its 1.88 is a same-recipe, not a same-data, comparison):
the text (37 Gutenberg plays with stage directions and headers, 4.9M characters, against
tiny-shakespeare's 1.1M characters of dialogue), the vocabulary (86 characters against 65), the
block (RMSNorm and rotary positions against LayerNorm and learned positions), and the eval
(every held-out window exactly, against nanoGPT's estimate from 20 random batches).
"""
from research import configs


def get_config():
  config = configs.defaults('lm')
  config.data.name = 'shakespeare_tail'     # nanoGPT's split: the last contiguous 10% held out
  config.data.tokenizer = 'char'
  config.data.seq_len = 64                  # block_size
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.d_model = 128
  config.model.dropout = 0.0
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 1e-3
  config.optimizer.b2 = 0.99
  config.optimizer.weight_decay = 0.1
  config.optimizer.clip_grad_norm = 1.0
  config.optimizer.schedule.name = 'warmup_cosine'
  config.optimizer.schedule.warmup_steps = 100
  config.optimizer.schedule.end_value = 0.1  # min_lr 1e-4
  config.train.batch_size = 12
  config.train.num_steps = 2000             # max_iters = lr_decay_iters
  config.train.log_every = 250
  config.train.eval_every = 1000
  config.train.sample_every = 2000
  config.train.checkpoint_every = 1000
  config.eval.batch_size = 256
  config.eval.num_samples = 4
  config.sample.max_new_tokens = 60         # within the 64-token context (no cropping)
  config.sample.temperature = 0.8
  return config
