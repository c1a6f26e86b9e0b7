"""DPO on the same simulated preference pairs as the reward model, against the same reference
(the SFT policy) as PPO (Rafailov et al. 2023; research/rlhf/dpo.py).

  python -m research.main --config=experiments/dpo_shakespeare_sentiment/config.py \
      --workdir=workdirs/rlhf/dpo

Prerequisites (defaults below): the SFT run workdirs/rlhf/sft and the pair store
workdirs/rlhf/preferences.sqlite (experiments/rm_shakespeare_sentiment has the pipeline).
Eval: held-out pairs' implicit-reward accuracy and margin; the true reward and KL of its
generations come from research.rlhf.evaluate (experiments/ppo_shakespeare_sentiment).
"""
from research import configs


def get_config():
  config = configs.defaults('dpo')
  config.data.name = 'shakespeare_preferences'
  config.data.records = 'workdirs/rlhf/preferences.sqlite'
  config.data.tokenizer = 'char'
  config.data.seq_len = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.d_model = 128
  config.model.dropout = 0.0          # unused: DPO's passes are deterministic
  config.init_from.workdir = 'workdirs/rlhf/sft'
  config.dpo.beta = 0.1
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 3e-5
  config.optimizer.clip_grad_norm = 1.0
  config.optimizer.schedule.name = 'warmup_cosine'
  config.optimizer.schedule.warmup_steps = 20
  config.optimizer.schedule.end_value = 0.1
  config.train.batch_size = 32
  config.train.num_steps = 400
  config.train.log_every = 20
  config.train.eval_every = 100
  config.train.sample_every = 100
  config.train.checkpoint_every = 100
  config.train.keep_checkpoints = 10
  config.eval.batch_size = 64
  config.eval.num_samples = 4
  config.prompt = "Who's there?\n\n"
  config.sample.max_new_tokens = 48
  config.sample.temperature = 0.7
  return config
