"""Subword GPT on Shakespeare's plays: lm_shakespeare_char's model on sentencepiece BPE tokens.

  python -m research.main --config=experiments/lm_shakespeare_bpe/config.py --workdir=RUN

The BPE vocabulary (2048 pieces, byte fallback, no normalization, so decoding is lossless) is
trained offline on the training plays the first time the config runs and cached next to the
prepared data. A 128-token window holds ~2.6x more text than a 128-character one; eval reports
bits per character on the same held-out plays, so the two tokenizations compare directly.
"""
from research import configs


def get_config():
  config = configs.defaults('lm')
  config.data.name = 'shakespeare'
  config.data.tokenizer = 'bpe'
  config.data.vocab_size = 2048
  config.data.seq_len = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.d_model = 128
  config.model.dropout = 0.1
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 1e-3
  config.optimizer.b2 = 0.99
  config.optimizer.weight_decay = 0.1
  config.optimizer.clip_grad_norm = 1.0
  config.optimizer.schedule.name = 'warmup_cosine'
  config.optimizer.schedule.warmup_steps = 100
  config.optimizer.schedule.end_value = 0.1
  config.train.batch_size = 32
  config.train.num_steps = 3000
  config.train.log_every = 100
  config.train.eval_every = 1000
  config.train.sample_every = 1000
  config.train.checkpoint_every = 1000
  config.eval.batch_size = 64
  config.eval.num_samples = 4
  config.sample.max_new_tokens = 60
  config.sample.temperature = 0.8
  return config
