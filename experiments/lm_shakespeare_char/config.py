"""Character-level GPT on Shakespeare's plays (held-out plays for eval), sized for a CPU.

  python -m research.main --config=experiments/lm_shakespeare_char/config.py --workdir=RUN
  python -m research.main --config=experiments/lm_shakespeare_char/config.py --workdir=RUN \
      --mode=sample --config.prompt="ROMEO. " --config.sample.temperature=0.8

A "baby GPT" in the spirit of nanoGPT's shakespeare_char (4 layers, 4 heads, width 128, GELU,
dropout 0.1), with rotary positions and RMSNorm; 0.8M parameters. Context 128 characters, batch
32, AdamW 1e-3 with warmup and cosine decay. Eval reports held-out bits per character on whole
plays the model never saw (research/data/builders/shakespeare.py names them). Scale up on an
accelerator with --config.model.d_model=384 --config.model.num_layers=6 --config.data.seq_len=256 etc.
"""
from research import configs


def get_config():
  config = configs.defaults('lm')
  config.data.name = 'shakespeare'
  config.data.tokenizer = 'char'
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
  config.sample.max_new_tokens = 120
  config.sample.temperature = 0.8
  return config
