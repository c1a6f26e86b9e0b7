"""PPO fine-tuning of the SFT dialogue model against the sentiment reward model, with an adaptive
KL leash to the SFT policy (Ziegler et al. 2019 at small scale; research/rlhf/ppo_family.py).

  python -m research.main --config=experiments/ppo_shakespeare_sentiment/config.py \
      --workdir=workdirs/rlhf/ppo
  # the same with a fixed beta:  --config.ppo.kl_target=0 --config.ppo.kl_coef=0.05
  # true reward vs KL of its checkpoints (and of DPO's, the SFT policy's):
  python -m research.rlhf.evaluate --reference=workdirs/rlhf/sft \
      --runs=workdirs/rlhf/sft,workdirs/rlhf/ppo,workdirs/rlhf/dpo

Prerequisites (defaults below): the SFT run workdirs/rlhf/sft (the policy and the frozen
reference) and the reward model workdirs/rlhf/rm (experiments/rm_shakespeare_sentiment, whose
docstring has the whole pipeline).

One iteration: 64 prompts (a speech and '\n\n', the last 63 characters, from the train plays)
-> 48-character replies at temperature 0.7 -> reward model score - beta * KL -> GAE
(gamma 1, lambda 0.95) -> 4 epochs x 4 minibatches of clipped PPO updates. The score is
normalised to mean 0, std 1 on the SFT policy's first rollouts; beta starts at 0.1 and adapts
toward 4 nats per reply with a horizon of 1,000 replies (Ziegler et al. use 10,000 over a far
longer run: at 200 x 64 = 12,800 replies that horizon lets beta move by at most 30%, and the KL
overshoots its target). Eval: 256 held-out prompts (plays
never trained on): reward-model score, KL to the SFT policy and the hidden true reward.
"""
from research import configs


def get_config():
  config = configs.defaults('ppo')
  config.data.name = 'shakespeare_prompts'
  config.data.tokenizer = 'char'
  config.data.seq_len = 64            # prompt tokens (left-padded)
  config.data.num_eval_examples = 256
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.d_model = 128
  config.model.dropout = 0.0          # unused: PPO's passes are deterministic
  config.model.max_len = 128          # prompt + response (the pretraining context)
  config.init_from.workdir = 'workdirs/rlhf/sft'
  config.rlhf.reward = 'model'
  config.rlhf.reward_workdir = 'workdirs/rlhf/rm'
  config.rlhf.response_len = 48
  config.rlhf.temperature = 0.7
  config.ppo.kl_coef = 0.1
  config.ppo.kl_target = 4.0
  config.ppo.kl_horizon = 1000
  config.ppo.epochs = 4
  config.ppo.minibatches = 4
  config.optimizer.name = 'adam'
  config.optimizer.lr = 3e-5
  config.optimizer.clip_grad_norm = 1.0
  config.train.batch_size = 64
  config.train.num_steps = 200
  config.train.log_every = 10
  config.train.eval_every = 50
  config.train.sample_every = 50
  config.train.checkpoint_every = 50
  config.train.keep_checkpoints = 10
  config.eval.batch_size = 128
  config.eval.num_samples = 4
  config.prompt = "Who's there?\n\n"
  config.sample.max_new_tokens = 48
  config.sample.temperature = 0.7
  return config
