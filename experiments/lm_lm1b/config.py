"""A GPT on the One Billion Word benchmark (lm1b, Chelba et al. 2013), for TPU/GPU (cloud path).

  python -m research.main --config=experiments/lm_lm1b/config.py --workdir=RUN \
      --config.data.data_dir=gs://BUCKET/tensorflow_datasets [--distributed]

The model and optimisation follow the Flax lm1b example (google/flax examples/lm1b,
configs/default.py): 6 layers, width 512, 8 heads, MLP 2048, dropout 0.1 (attention too), a
30k-piece sentencepiece vocabulary fit on the first 10M characters of the train sentences,
AdamW (b2 0.98, eps 1e-9) with weight decay 0.1, 1000 linear warmup steps then inverse-square-root decay (its base
0.05 times rsqrt(1000 warmup steps) = a 1.58e-3 peak), global batch 256 (32 per device on a v3-8),
128 tokens per training example, 500k steps, bf16 compute. Ours differs in the model (RoPE,
RMSNorm, tied embeddings, no biases) and in the data: one sentence per example, padded and
masked, where the example packs several sentences per row. Needs the TFDS `lm1b` data prepared
(`pip install -e .[tf]`; nothing downloads here), read one sentence at a time
(research/data/corpus.py `SentenceReader`). No result from this config is reported: it has not run
on an accelerator yet.
"""
from research import configs


def get_config():
  config = configs.defaults('lm')
  config.data.name = 'lm1b'
  config.data.source = 'tfds'
  config.data.tokenizer = 'bpe'
  config.data.vocab_size = 30_000
  config.data.seq_len = 128
  config.data.num_eval_examples = -1          # the 306,688 test sentences
  config.model.num_layers = 6
  config.model.num_heads = 8
  config.model.d_model = 512
  config.model.mlp_dim = 2048
  config.model.dropout = 0.1
  config.model.attn_dropout = 0.1
  config.precision.compute = 'bfloat16'
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 0.05 / 1000 ** 0.5
  config.optimizer.b2 = 0.98
  config.optimizer.eps = 1e-9
  config.optimizer.weight_decay = 0.1
  config.optimizer.schedule.name = 'warmup_rsqrt'
  config.optimizer.schedule.warmup_steps = 1000
  config.train.batch_size = 256
  config.train.num_steps = 500_000
  config.train.log_every = 100
  config.train.eval_every = 10_000
  config.train.sample_every = 10_000
  config.train.checkpoint_every = 10_000
  config.eval.batch_size = 512
  config.eval.num_samples = 8
  config.prompt = 'I love to '
  config.sample.max_new_tokens = 50
  config.sample.temperature = 0.6
  config.sample.top_k = 20
  return config
