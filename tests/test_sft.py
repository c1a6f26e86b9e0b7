"""Supervised fine-tuning of the LM: the dialogue data (format, response-only loss mask,
deterministic and resumable batches), init_from a pretrained run (every parameter copied, a
mismatched vocabulary refused in one line) and LoRA adapters."""
import json
import math
import os

import jax
import numpy as np
import pytest

from research import checkpoint as ckpt_lib
from research import configs, parallel, trainer
from research.data import corpus, datasets, dialogue, pipeline
from research.data import tokenizers
from research.lm import lora
from tests.helpers import load_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('sft_data'))


def _tiny(c, data_dir):
  c.data.data_dir = data_dir
  c.data.seq_len = 32
  c.data.read_threads = 2
  c.model.update(num_layers=2, num_heads=2, d_model=32, dropout=0.0)
  c.train.update(batch_size=8, num_steps=2, log_every=1, eval_every=2, sample_every=2,
                 checkpoint_every=2)
  c.optimizer.schedule.warmup_steps = 1
  c.data.num_eval_examples = 32
  c.eval.batch_size = 16
  c.eval.num_samples = 0
  c.sample.max_new_tokens = 12
  return c


def tiny_sft(data_dir, **model):
  c = _tiny(load_config('sft_shakespeare_dialogue'), data_dir)
  c.model.update(**model)
  return c


def tiny_pretrain(data_dir):
  return _tiny(load_config('lm_shakespeare_char'), data_dir)


@pytest.fixture(scope='module')
def pretrained(data_dir, tmp_path_factory):
  """A tiny lm_shakespeare_char run (2 steps): its workdir."""
  work = str(tmp_path_factory.mktemp('pretrained'))
  c = tiny_pretrain(data_dir)
  configs.validate(c, 2)
  trainer.train(c, work)
  return work


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# Data


def test_encode_pair_format_and_truncation(data_dir):
  tok = corpus.tokenizer(tiny_sft(data_dir).data)
  enc = dialogue.encode_pair(tok, 'Who is there?', 'Nay, answer me.', 40)
  want = [tok.bos_id, *tok.encode('Who is there?\n\n'), *tok.encode('Nay, answer me.'),
          tok.eos_id]
  assert enc.tokens.shape == (41,) and enc.tokens.dtype == np.int32
  np.testing.assert_array_equal(enc.tokens[:len(want)], want)
  assert (enc.tokens[len(want):] == tokenizers.PAD).all()
  targets = enc.tokens[1:]
  assert tok.decode(targets[enc.loss_mask > 0]) == 'Nay, answer me.'
  assert targets[enc.loss_mask > 0][-1] == tok.eos_id                 # the EOS is scored
  assert enc.loss_mask.sum() == len('Nay, answer me.') + 1 and enc.prompt_cut == 0
  # Long: the prompt keeps its end (at least half the window), the reply its start, no EOS.
  prompt, reply = 'p' * 30 + 'END', 'START' + 'r' * 40
  enc = dialogue.encode_pair(tok, prompt, reply, 20)
  assert tok.decode(enc.tokens) == 'pppppEND\n\nSTARTrrrrr'              # BOS + 10 + 10
  assert (enc.prompt_cut, enc.response_cut) == (35 - 10, 46 - 10)
  assert tok.decode(enc.tokens[1:][enc.loss_mask > 0]) == 'STARTrrrrr'
  assert tok.eos_id not in enc.tokens
  # A long prompt before a short reply gives the reply all it needs.
  enc = dialogue.encode_pair(tok, 'x' * 50, 'Ay.', 20)
  assert tok.decode(enc.tokens) == 'x' * 14 + '\n\nAy.' and enc.tokens[-1] == tok.eos_id
  assert enc.loss_mask.sum() == 4


def test_loss_mask_covers_exactly_the_response(data_dir):
  c = tiny_sft(data_dir)
  c.data.seq_len = 96
  c.data.train_split = 'train[:2]'
  pairs = dialogue.pairs(c.data, 'train[:2]')
  read = datasets.reader(c.data, 'train[:2]', train=True)
  assert read.num_examples == len(pairs) > 500
  tok = corpus.tokenizer(c.data)
  rows, _ = read.rows(np.arange(len(pairs)))
  masks = read.row_entries(np.arange(len(pairs)))['loss_mask']
  assert rows.shape == (len(pairs), 97) and masks.shape == (len(pairs), 96)
  whole = 0
  for (prompt, reply), row, m in zip(pairs, rows, masks):
    targets = row[1:]
    on = np.flatnonzero(m)
    assert m.sum() == len(on) > 0 and np.all(np.diff(on) == 1)      # one contiguous run
    scored = tok.decode(targets[on])
    context = tok.decode(row[:on[0] + 1])                              # BOS .. the separator
    assert row[0] == tok.bos_id and context.endswith('\n\n')
    assert (prompt + '\n\n').endswith(context)
    if targets[on[-1]] == tok.eos_id:                                  # the whole reply
      assert scored == reply
      whole += context == prompt + '\n\n'
    else:                                                              # cut: fills the window
      assert reply.startswith(scored) and on[-1] == 95   # (maybe only the EOS cut)
    assert (targets[on[-1] + 1:] == tokenizers.PAD).all()
  assert whole > 0.2 * len(pairs)
  stats = dialogue.pair_stats(c.data, 'train[:2]')
  assert stats['pairs'] == len(pairs) and stats['response_tokens'] == masks.sum()
  # Train batches carry the same mask for the same rows.
  batch = next(pipeline.train_iterator(c.data, 64, seed=0))
  assert set(batch) == {'tokens', 'loss_mask'} and batch['loss_mask'].dtype == np.float32
  index = {r.tobytes(): i for i, r in enumerate(rows)}
  for row, m in zip(batch['tokens'], batch['loss_mask']):
    np.testing.assert_array_equal(m, masks[index[row.tobytes()]])


def test_eval_batches_and_info_count_pairs(data_dir):
  c = tiny_sft(data_dir).data
  c.num_eval_examples = 40
  n_test = len(dialogue.pairs(c, 'test'))
  info = datasets.info(c)
  assert info == datasets.DatasetInfo((33,), 0, len(dialogue.pairs(c, 'train')), 40, 'tokens')
  assert 2500 < n_test < 3300
  batches = list(pipeline.eval_batches(c, 32))
  assert len(batches) == pipeline.num_eval_batches(c, 32) == 2
  assert set(batches[0]) == {'tokens', 'loss_mask', 'mask'}
  read = datasets.reader(c, 'test')
  mask = np.concatenate([b['mask'] for b in batches])
  loss_mask = np.concatenate([b['loss_mask'] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(64) < 40)
  np.testing.assert_array_equal(loss_mask[:40], read.row_entries(np.arange(40))['loss_mask'])
  assert not loss_mask[40:].any()
  # The tokenizer is the pretraining one: same directory as the 'shakespeare' dataset's.
  pre = tiny_pretrain(c.data_dir).data
  assert corpus.tokenizer_dir(c) == corpus.tokenizer_dir(pre)
  assert corpus.tokenizer_mismatch(c, pre) is None


def test_batches_deterministic_resumable_and_host_sharded(data_dir):
  c = tiny_sft(data_dir).data
  c.train_split = 'train[:1]'
  n = datasets.reader(c, 'train[:1]').num_examples
  a = _take(pipeline.train_iterator(c, 24, seed=3), 2 * (n // 24 + 1))    # crosses an epoch
  _assert_batches_equal(a, _take(pipeline.train_iterator(c, 24, seed=3), len(a)))
  other = next(pipeline.train_iterator(c, 24, seed=4))
  assert not np.array_equal(a[0]['tokens'], other['tokens'])
  it = pipeline.train_iterator(c, 24, seed=3)
  _take(it, 5)
  state = it.get_state()
  want = _take(it, len(a) - 5)
  fresh = pipeline.train_iterator(c, 24, seed=3)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, len(want)), want)
  hosts = [_take(pipeline.train_iterator(c, 24, 3, p, 2), 4) for p in range(2)]
  for s in range(4):
    for k in ('tokens', 'loss_mask'):
      np.testing.assert_array_equal(np.concatenate([h[s][k] for h in hosts]), a[s][k])


# ---------------------------------------------------------------------------------------------
# Fine-tuning from a pretrained run


def _pretrained_params(workdir):
  source = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), read_only=True)
  params = source.restore_params(None)['params']
  source.close()
  return params


def test_init_from_copies_every_parameter(data_dir, pretrained, tmp_path):
  c = tiny_sft(data_dir)
  c.init_from.workdir = pretrained
  configs.validate(c, 2)
  want = _pretrained_params(pretrained)
  exp = trainer.build(c)
  fresh = trainer.init_state(exp, trainer._train_iterator(c))
  state = parallel.to_host(trainer._transfer(exp, fresh).params)
  _, report = ckpt_lib.transfer_params(parallel.to_host(fresh.params), want)
  assert report['kept'] == [] and len(report['copied']) == len(jax.tree.leaves(want))
  assert jax.tree.structure(state) == jax.tree.structure(want)
  jax.tree.map(np.testing.assert_array_equal, state, want)
  # The whole run: fine-tunes, then evaluates the held-out replies only.
  final = trainer.train(c, str(tmp_path / 'sft'))
  ev = final['eval']
  assert final['step'] == 2 and ev['num_examples'] == 32
  read = datasets.reader(c.data, 'test')
  assert ev['num_tokens'] * 32 == pytest.approx(read.row_entries(np.arange(32))['loss_mask'].sum())
  assert ev['bits_per_token'] < math.log2(corpus.tokenizer(c.data).vocab_size) + 1


def _fake_run(tmp_path, name, config):
  """A run directory with its config.json and an (empty) checkpoint step directory."""
  work = tmp_path / name
  (work / 'checkpoints' / '1').mkdir(parents=True)
  (work / 'config.json').write_text(json.dumps(config.to_dict()))
  return str(work)


def _config_error(c) -> str:
  with pytest.raises(configs.ConfigError) as e:
    configs.validate(c, 2)
  assert '\n' not in str(e.value)
  return str(e.value)


def test_mismatched_vocab_is_a_one_line_config_error(data_dir, pretrained, tmp_path):
  c = tiny_sft(data_dir)
  c.init_from.workdir = pretrained                        # pretrained with 'char'
  c.data.tokenizer = 'byte'
  msg = _config_error(c)
  assert msg.startswith("config.data.tokenizer='byte': the pretrained run in init_from.workdir=")
  assert "used data.tokenizer='char'" in msg and '--config.data.tokenizer=char' in msg
  # A pretraining split other than the one the dialogue tokenizer is fit on.
  pre = tiny_pretrain(data_dir)
  pre.data.train_split = 'train[:90%]'
  c = tiny_sft(data_dir)
  c.init_from.workdir = _fake_run(tmp_path, 'split', pre)
  assert "used data.train_split='train[:90%]'" in _config_error(c)
  # Another family; a LoRA run whose adapters would be dropped.
  vae = configs.defaults('vae')
  c.init_from.workdir = _fake_run(tmp_path, 'vae', vae)
  assert "is a 'vae' run, not an LM" in _config_error(c)
  pre = tiny_pretrain(data_dir)
  pre.model.lora_rank = 4
  c.init_from.workdir = _fake_run(tmp_path, 'lora', pre)
  assert _config_error(c).startswith('config.model.lora_rank=0: the pretrained run')
  c.model.lora_rank = 4
  configs.validate(c, 2)


# ---------------------------------------------------------------------------------------------
# LoRA


def test_lora_starts_as_the_base_model_and_trains_only_adapters(data_dir, pretrained):
  c = tiny_sft(data_dir, lora_rank=4, lora_alpha=8.0)
  c.init_from.workdir = pretrained
  c.optimizer.lr = 1e-2
  c.optimizer.schedule.warmup_steps = 0             # a nonzero lr at the first step
  configs.validate(c, 2)
  exp = trainer.build(c)
  batch = next(trainer._train_iterator(c))
  state = trainer._transfer(exp, trainer.init_state(exp, trainer._train_iterator(c)))
  params = parallel.to_host(state.params)
  base, adapters = lora.split(params)
  want = _pretrained_params(pretrained)
  jax.tree.map(np.testing.assert_array_equal, base, want)          # the base is the pretrained
  assert set(adapters) == {'block_0', 'block_1'}
  assert set(adapters['block_0']) == {'attn', 'mlp'}
  assert adapters['block_0']['attn']['qkv']['a'].shape == (32, 4)
  assert adapters['block_0']['attn']['qkv']['b'].shape == (4, 96)
  assert lora.num_adapter_params(params) == 2 * 4 * (32 + 96 + 32 + 32 + 32 + 128 + 128 + 32)
  # At init the adapted model is the base model, logits and all.
  fam = exp.family
  tokens = batch['tokens'][:, :-1]
  logits, _ = fam._apply(params, tokens)
  base_logits, _ = fam.net.apply({'params': want}, tokens)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(base_logits))
  # One step: the base does not move, the adapters do.
  new, metrics = exp.train_step(state, parallel.host_batch_to_global(batch, exp.mesh),
                                jax.random.key(0))
  new = parallel.to_host(new.params)
  new_base, new_adapters = lora.split(new)
  jax.tree.map(np.testing.assert_array_equal, new_base, base)
  for layer in adapters:
    for module, names in (('attn', ('qkv', 'out')), ('mlp', ('up', 'down'))):
      for name in names:
        assert np.abs(new_adapters[layer][module][name]['b']).max() > 0, (layer, name)
  assert np.isfinite(float(metrics['loss']))
  logits, _ = fam._apply(new, tokens)
  assert not np.allclose(np.asarray(logits), np.asarray(base_logits))
  merged = fam.model_params(new)
  assert jax.tree.structure(merged) == jax.tree.structure(want)


def test_lora_config_errors(data_dir):
  for field, value in (('lora_rank', -1), ('lora_alpha', 0.0)):
    c = tiny_sft(data_dir, **{field: value})
    assert _config_error(c).startswith(f'config.model.{field}={value!r}')
