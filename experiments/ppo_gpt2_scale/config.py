"""PPO at GPT-2 small scale with the published settings of Ziegler et al. 2019 ("Fine-Tuning
Language Models from Human Preferences", arXiv:1909.08593), for TPU/GPU:
KL coefficient 0.15 adapted toward 6 nats (horizon 10,000 rollouts), 24-token responses sampled
at temperature 0.7, gamma 1, lambda 0.95, clip 0.2, 4 PPO epochs.

Model: GPT-2 small's shape (12 layers, 12 heads, width 768; our RoPE/RMSNorm variant) over a
BPE vocabulary fit on the Shakespeare train plays. The settings not named above (batch, learning
rate, minibatches) are ours, not the paper's. Prerequisites, all of this architecture
(--config.model.num_layers=12 --config.model.num_heads=12 --config.model.d_model=768
--config.data.tokenizer=bpe --config.data.vocab_size=8192 on each): an LM pretrain, its SFT
(workdirs/gpt2/sft), the preference pairs sampled from it, and a reward model (workdirs/gpt2/rm);
see experiments/rm_shakespeare_sentiment for the pipeline.

  python -m research.main --config=experiments/ppo_gpt2_scale/config.py --workdir=workdirs/gpt2/ppo
"""
from research import configs


def get_config():
  config = configs.defaults('ppo')
  config.data.name = 'shakespeare_prompts'
  config.data.tokenizer = 'bpe'
  config.data.vocab_size = 8192
  config.data.seq_len = 64            # prompt tokens
  config.data.num_eval_examples = 1024
  config.model.num_layers = 12
  config.model.num_heads = 12
  config.model.d_model = 768
  config.model.dropout = 0.0
  config.model.max_len = 128
  config.precision.compute = 'bfloat16'
  config.init_from.workdir = 'workdirs/gpt2/sft'
  config.rlhf.reward = 'model'
  config.rlhf.reward_workdir = 'workdirs/gpt2/rm'
  config.rlhf.response_len = 24
  config.rlhf.temperature = 0.7
  config.ppo.kl_coef = 0.15
  config.ppo.kl_target = 6.0
  config.ppo.kl_horizon = 10000
  config.ppo.epochs = 4
  config.ppo.minibatches = 8
  config.optimizer.name = 'adam'
  config.optimizer.lr = 1.41e-5
  config.optimizer.clip_grad_norm = 1.0
  config.train.batch_size = 512
  config.train.num_steps = 2000
  config.train.log_every = 10
  config.train.eval_every = 100
  config.train.sample_every = 100
  config.train.checkpoint_every = 100
  config.eval.batch_size = 512
  config.eval.num_samples = 8
  config.sample.max_new_tokens = 24
  config.sample.temperature = 0.7
  return config
