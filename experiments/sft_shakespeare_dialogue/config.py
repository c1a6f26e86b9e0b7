"""Supervised fine-tuning of the character-level Shakespeare GPT to answer a speech with the next
speaker's reply; held-out eval = response-only bits per character on plays the model never saw.

  # 1. pretrain (experiments/lm_shakespeare_char: 3000 steps)
  python -m research.main --config=experiments/lm_shakespeare_char/config.py \
      --workdir=workdirs/lm_shakespeare_char
  # 2. fine-tune from its latest checkpoint
  python -m research.main --config=experiments/sft_shakespeare_dialogue/config.py \
      --workdir=workdirs/sft_dialogue --config.init_from.workdir=workdirs/lm_shakespeare_char
  # 3. the from-scratch baseline: the same run without the pretrained weights
  python -m research.main --config=experiments/sft_shakespeare_dialogue/config.py \
      --workdir=workdirs/sft_dialogue_scratch --config.init_from.workdir=''
  # talk to it (a speech, then the blank line that ends a turn)
  python -m research.main --config=experiments/sft_shakespeare_dialogue/config.py \
      --workdir=workdirs/sft_dialogue --mode=sample --config.prompt="$(printf 'Who is there?\n\n')"

Data ('shakespeare_dialogue', research/data/dialogue.py): every pair of consecutive speeches of a
scene by different speakers, 27,017 train pairs from the 34 train plays and 2,910 held-out
pairs from Hamlet, Henry IV Part 1 and Richard III (the pretraining split). One pair is one
sequence BOS prompt '\n\n' response EOS of seq_len + 1 = 129 characters (the pretraining
context), padded; long pairs are truncated, keeping the end of the prompt and the start of the
reply (about half the pairs at 128; --config.data.seq_len=256 keeps two thirds whole, beyond the
positions the pretrained model saw). The loss and the eval count the reply's tokens and its
EOS only (`loss_mask`), so eval bits_per_char is over the held-out replies' characters.

Fine-tuning: init_from copies every parameter of the pretrained run (the tokenizer is the one
pretraining used, fit on the train plays; a run with another tokenizer is refused with one
line). Same model as lm_shakespeare_char (4 layers, 4 heads, width 128, dropout 0.1), AdamW at
3e-4 (a third of pretraining's peak) with a short warmup and cosine decay, 400 steps of 32 pairs
(about half an epoch). Variants:
  --config.optimizer.frozen='^embedding$'       freeze the (tied input/output) embedding
  --config.optimizer.frozen='^embedding$,^block_[01]/'   ... and the first two blocks
  --config.model.lora_rank=8                    LoRA adapters on the attention and MLP kernels,
                                                base frozen (research/lm/lora.py; rank 8 is 66k
                                                adapter parameters next to the 0.8M frozen ones;
                                                try --config.optimizer.lr=1e-3)
"""
from research import configs


def get_config():
  config = configs.defaults('lm')
  config.data.name = 'shakespeare_dialogue'
  config.data.tokenizer = 'char'
  config.data.seq_len = 128
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.d_model = 128
  config.model.dropout = 0.1
  config.init_from.workdir = ''         # --config.init_from.workdir=PRETRAINED (see above)
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 3e-4
  config.optimizer.b2 = 0.99
  config.optimizer.weight_decay = 0.1
  config.optimizer.clip_grad_norm = 1.0
  config.optimizer.schedule.name = 'warmup_cosine'
  config.optimizer.schedule.warmup_steps = 20
  config.optimizer.schedule.end_value = 0.1
  config.train.batch_size = 32
  config.train.num_steps = 400
  config.train.log_every = 20
  config.train.eval_every = 100
  config.train.sample_every = 200
  config.train.checkpoint_every = 200
  config.eval.batch_size = 64
  config.eval.num_samples = 4
  config.eval.best_metric = 'bits_per_char'
  config.prompt = "Who's there?\n\n"   # the first line of Hamlet (held out), then a turn break
  config.sample.max_new_tokens = 100
  config.sample.temperature = 0.8
  return config
