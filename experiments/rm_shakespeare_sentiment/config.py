"""Reward model for the synthetic Shakespeare sentiment task: the SFT dialogue model with a scalar
head, trained with the Bradley-Terry loss on simulated preference pairs; held-out pair accuracy.

The RLHF pipeline (each step a normal run; paths are this config's defaults):
  # 1-2. pretrain and fine-tune the policy (experiments/lm_shakespeare_char, then
  #      experiments/sft_shakespeare_dialogue with --workdir=workdirs/rlhf/sft)
  # 3. preference pairs: two replies of the SFT policy per dialogue prompt, compared by
  #    simulated Bradley-Terry labelers on the hidden sentiment score (research/rlhf/);
  #    labeler temperature 0.5: a reply with one more lexicon word wins 88% of the time
  python -m research.rlhf.preferences --policy=workdirs/rlhf/sft \
      --store=workdirs/rlhf/preferences.sqlite --split=train --num_prompts=12000 \
      --labeler_temperature=0.5
  python -m research.rlhf.preferences --policy=workdirs/rlhf/sft \
      --store=workdirs/rlhf/preferences.sqlite --split=test --num_prompts=500 \
      --labeler_temperature=0.5
  # 4. this reward model
  python -m research.main --config=experiments/rm_shakespeare_sentiment/config.py \
      --workdir=workdirs/rlhf/rm
  # 5. experiments/ppo_shakespeare_sentiment and experiments/dpo_shakespeare_sentiment

Data ('shakespeare_preferences', research/data/preferences.py): the store's synthetic pairs, each
side BOS prompt '\n\n' response (no EOS) in seq_len + 1 = 129 characters; pairs carry their split
(train prompts from the train plays, test prompts from the held-out plays). Human pairs imported
as JSONL (research/records.py) go through the same reader: --config.data.preference_source=human.

Model: initialised from the SFT run (every LM parameter; the head N(0, 1/sqrt(d+1)) fresh), same
architecture; AdamW 3e-4, 1,000 steps of 32 pairs (2.7 epochs); eval = held-out pair accuracy.
"""
from research import configs


def get_config():
  config = configs.defaults('reward_model')
  config.data.name = 'shakespeare_preferences'
  config.data.records = 'workdirs/rlhf/preferences.sqlite'
  config.data.tokenizer = 'char'
  config.data.seq_len = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.d_model = 128
  config.model.dropout = 0.1
  config.init_from.workdir = 'workdirs/rlhf/sft'
  config.reward.center_coef = 0.01
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 3e-4
  config.optimizer.weight_decay = 0.1
  config.optimizer.clip_grad_norm = 1.0
  config.optimizer.schedule.name = 'warmup_cosine'
  config.optimizer.schedule.warmup_steps = 50
  config.optimizer.schedule.end_value = 0.1
  config.train.batch_size = 32
  config.train.num_steps = 1000
  config.train.log_every = 20
  config.train.eval_every = 250
  config.train.sample_every = 100000
  config.train.checkpoint_every = 250
  config.eval.batch_size = 64
  config.eval.num_samples = 0
  config.eval.best_metric = 'accuracy'
  config.eval.best_mode = 'max'
  return config
