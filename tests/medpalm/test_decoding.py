"""KV-cache decoding: equal to recomputation, greedy / beam / sampling relations, sharding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from medpalm import decoding, partitioning
from medpalm.model import MedPalmMModel
from medpalm.models.medpalm_m import MedPalmM
from tests.support.decoding import EOS, make_model, prompt_batch, small_config


@pytest.fixture(scope="module")
def setup():
  config = small_config()
  model, params = make_model(config)
  return config, model, params, prompt_batch(config)


@pytest.mark.parametrize("prefix_bidirectional", [False, True])
def test_cached_steps_equal_full_recomputation(setup, prefix_bidirectional):
  """Every decoded step's logits equal a full forward pass over the same prefix (images
  mid-prompt, prompts of different lengths in one batch)."""
  config, model, params, batch = setup
  model.prefix_bidirectional = prefix_bidirectional
  try:
    lengths = jnp.sum(batch["decoder_causal_attention"], 1)
    start = model.prefill(params, batch, 24, lengths)
    logits, cache, tokens = start.logits, start.cache, np.asarray(batch["decoder_input_tokens"])
    tokens = tokens * np.asarray(batch["decoder_causal_attention"])
    rows = np.arange(2)
    for step in range(5):
      positions = np.asarray(lengths) + step
      full = MedPalmM(config).apply(
          {"params": params},
          jnp.asarray(tokens),
          images=batch["images"],
          image_mask=batch["image_mask"],
          decoder_causal_attention=(
              batch["decoder_causal_attention"] if prefix_bidirectional else None
          ),
      )
      np.testing.assert_allclose(
          np.asarray(logits), np.asarray(full[rows, positions - 1]), atol=1e-5, rtol=0
      )
      token = np.asarray(jnp.argmax(logits, -1), np.int32)
      tokens[rows, positions] = token
      logits, cache = model.extend(
          params, jnp.asarray(token)[:, None], jnp.asarray(positions)[:, None], cache
      )
  finally:
    model.prefix_bidirectional = False


def test_greedy_decodes_are_the_argmax_chain_and_stop_at_eos(setup):
  config, model, params, batch = setup
  decodes, aux = model.predict_batch_with_aux(params, batch)
  assert decodes.shape == (2, 24) and decodes.dtype == jnp.int32
  lengths = np.asarray(jnp.sum(batch["decoder_causal_attention"], 1))
  assert np.all(np.asarray(decodes)[0, 24 - lengths[0] :] == 0)  # no room past the cache
  # The score is the log-likelihood of the decode under the model, as score_batch computes it.
  for row in range(2):
    n = int(np.sum(np.asarray(decodes[row]) != 0))
    seq = np.zeros((1, 24 + 24), np.int32)
    prompt = np.asarray(batch["decoder_input_tokens"][row, : lengths[row]])
    seq[0, : lengths[row]] = prompt
    seq[0, lengths[row] : lengths[row] + n] = np.asarray(decodes[row, :n])
    targets = np.roll(seq, -1, 1)
    weights = np.zeros_like(seq, np.float32)
    weights[0, lengths[row] - 1 : lengths[row] - 1 + n] = 1
    one = {
        "decoder_input_tokens": jnp.asarray(seq),
        "decoder_target_tokens": jnp.asarray(targets),
        "decoder_loss_weights": jnp.asarray(weights),
        "images": batch["images"][row : row + 1],
        "image_mask": batch["image_mask"][row : row + 1],
    }
    np.testing.assert_allclose(model.score_batch(params, one)[0], aux["scores"][row], rtol=1e-4)


def test_eos_ends_a_row_and_zeros_follow():
  config = small_config()
  model, params = make_model(config)
  batch = prompt_batch(config)
  first, _ = model.predict_batch_with_aux(params, batch)
  # Make the second generated token of row 0 the EOS id by renaming it in the vocabulary.
  target = int(first[0, 1])
  model._vocabulary = type(model._vocabulary)(config.decoder.vocab_size, eos_id=target)
  decodes, _ = model.predict_batch_with_aux(params, batch)
  row = np.asarray(decodes[0])
  end = int(np.argmax(row == target))
  assert row[end] == target and np.all(row[end + 1 :] == 0)


def test_beam_one_equals_greedy_and_wider_beams_score_higher(setup):
  config, model, params, batch = setup
  greedy, g_aux = model.predict_batch_with_aux(params, batch)
  beam_model, _ = make_model(config, decode_fn=decoding.beam_search)
  beam1, b1_aux = beam_model.predict_batch_with_aux(
      params, batch, num_decodes=1, decoder_params={"alpha": 0.0}
  )
  np.testing.assert_array_equal(beam1, greedy)
  np.testing.assert_allclose(b1_aux["scores"], g_aux["scores"], rtol=1e-5)
  beams, aux = beam_model.predict_batch_with_aux(
      params, batch, num_decodes=4, return_all_decodes=True, decoder_params={"alpha": 0.0}
  )
  assert beams.shape == (2, 4, 24)
  assert np.all(np.diff(np.asarray(aux["scores"]), axis=1) >= 0)  # ascending, best last
  assert np.all(np.asarray(aux["scores"][:, -1]) >= np.asarray(g_aux["scores"]) - 1e-4)


def test_sampling_limits(setup):
  config, model, params, batch = setup
  greedy, _ = model.predict_batch_with_aux(params, batch)
  cold, _ = model.predict_batch_with_aux(
      params, batch, rng=jax.random.key(3), decoder_params={"temperature": 1e-4}
  )
  np.testing.assert_array_equal(cold, greedy)
  top1, _ = model.predict_batch_with_aux(
      params, batch, rng=jax.random.key(3), decoder_params={"temperature": 5.0, "topk": 1}
  )
  np.testing.assert_array_equal(top1, greedy)
  hot = functools.partial(
      model.predict_batch_with_aux, params, batch, decoder_params={"temperature": 3.0, "topp": 0.95}
  )
  a, b, c = (
      hot(rng=jax.random.key(7))[0],
      hot(rng=jax.random.key(7))[0],
      hot(rng=jax.random.key(8))[0],
  )
  np.testing.assert_array_equal(a, b)
  assert np.any(np.asarray(a) != np.asarray(c))


def test_num_decodes_samples_are_sorted_by_score(setup):
  config, model, params, batch = setup
  decodes, aux = model.predict_batch_with_aux(
      params,
      batch,
      rng=jax.random.key(0),
      num_decodes=3,
      return_all_decodes=True,
      decoder_params={"temperature": 2.0},
  )
  assert decodes.shape == (2, 3, 24)
  assert np.all(np.diff(np.asarray(aux["scores"]), axis=1) >= 0)


def test_the_decode_loop_compiles_once_as_one_while_loop():
  """With unrolled layers (scanned layers are while loops too) the main program holds exactly
  one loop, the decode loop, and the ViT's patch embedding appears once: images are read once.
  (Helper functions may hold loops of their own, e.g. the PRNG's.)"""
  config = small_config(scan_layers=False)
  model, params = make_model(config)
  batch = prompt_batch(config)
  text = jax.jit(model.predict_batch).lower(params, batch).as_text()
  main = text.split("func.func public @main")[1].split("func.func")[0]
  assert main.count("stablehlo.while") == 1
  patch_kernel = "tensor<588x64xf32>"  # [14·14·3, ViT width]
  assert sum(patch_kernel in line and "dot_general" in line for line in text.splitlines()) == 1


def test_sharded_decoding_matches_unsharded(setup):
  config, model, params, batch = setup
  want, _ = model.predict_batch_with_aux(params, batch)
  mesh = partitioning.make_mesh(data=1, fsdp=2, model=2, devices=jax.devices()[:4])
  boxed = jax.eval_shape(
      lambda: MedPalmM(config).init(
          jax.random.key(0),
          **{k: batch[k] for k in ("decoder_input_tokens", "images", "image_mask")}
      )
  )
  with partitioning.using(mesh):
    shardings = partitioning.mesh_shardings(boxed, mesh)["params"]
    sharded = jax.device_put(params, shardings)
    data = {
        k: jax.device_put(v, partitioning.data_sharding(mesh, v.ndim)) for k, v in batch.items()
    }
    got = jax.jit(model.predict_batch)(sharded, data)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(decoder_params={"temprature": 0.5}), r"\['temprature'\] not accepted"),
        (dict(num_decodes=0), "num_decodes must be >= 1"),
        (dict(decoder_params={"temperature": 0.7}), r"sampling at temperature 0.7 needs an rng"),
        (dict(decoder_params={"temperature": -1.0}), "temperature must be >= 0"),
        (dict(decoder_params={"max_decode_length": 12}), "prompt of 14 positions leaves no room"),
    ],
)
def test_bad_decoding_requests_are_clear_errors(setup, kwargs, message):
  config, model, params, batch = setup
  with pytest.raises(ValueError, match=message):
    model.predict_batch_with_aux(params, batch, **kwargs)


def test_decode_step_without_prefill_is_a_clear_error(setup):
  config, model, params, batch = setup
  with pytest.raises(ValueError, match="run a prefill first"):
    MedPalmM(config).apply(
        {"params": params},
        jnp.ones((2, 1), jnp.int32),
        decoder_positions=jnp.zeros((2, 1), jnp.int32),
        decode=True,
        mutable=["cache"],
    )
  assert EOS == model.output_vocabulary.eos_id


def test_kv_cache_is_sharded_by_its_logical_axes():
  """Under the default rules the cache splits over the batch axes, like the activations."""
  config = small_config()
  model, params = make_model(config)
  batch = prompt_batch(config, prompt_lengths=(9, 14) * 4, image_at=(2, 5) * 4)
  mesh = partitioning.make_mesh(2, 2, 2)
  with partitioning.using(mesh):
    data = {
        k: jax.device_put(v, partitioning.data_sharding(mesh, v.ndim)) for k, v in batch.items()
    }
    lengths = jnp.sum(batch["decoder_causal_attention"], 1)
    start = jax.jit(lambda p, b: model.prefill(p, b, 24, lengths))(params, data)
  leaves = jax.tree.leaves(start.cache)
  assert len(leaves) == 2  # cached_key, cached_value: [layers, B, S, kv heads, head dim]
  for leaf in leaves:
    assert leaf.shape == (2, 8, 24, 1, 16)
    assert leaf.sharding.spec[:2] == (None, ("data", "fsdp"))
    assert leaf.sharding.shard_shape(leaf.shape)[1] == 2


def test_decodes_never_hold_the_image_placeholder_or_padded_vocabulary_rows(setup):
  """With the embedding rows of the placeholder and of a padded id (past the vocabulary, the
  rows the embedding adds to split over devices) made the likeliest outputs, greedy, sampled
  and beam decodes still hold neither."""
  config, _, params, _ = setup
  size = config.decoder.vocab_size - 24  # the last 24 logits are padding
  padded = config.decoder.vocab_size - 3
  # The placeholder inside the vocabulary, so only its own rule can mask it.
  config = dataclasses.replace(config, image_token_id=size - 1)
  batch = prompt_batch(config)

  class Vocab(seqio.PassThroughVocabulary):
    image_placeholder_id = config.image_token_id

  boosted = jax.tree.map(lambda x: x, params)
  table = boosted["decoder"]["embedding"]
  for i in (config.image_token_id, padded):
    table = table.at[i].set(table[i] * 40.0)
  boosted["decoder"]["embedding"] = table
  for decode_fn, rng in (
      (decoding.temperature_sample, None),
      (decoding.temperature_sample, jax.random.key(1)),
      (decoding.beam_search, None),
  ):
    model = MedPalmMModel(MedPalmM(config), Vocab(size, eos_id=EOS), decode_fn=decode_fn)
    lengths = jnp.sum(batch["decoder_causal_attention"], 1)
    raw = np.asarray(jnp.argmax(model.prefill(boosted, batch, 24, lengths).logits, -1))
    assert set(raw.tolist()) <= {config.image_token_id, padded}  # unmasked, they would win
    sample = {} if rng is None else {"temperature": 1.0}
    decodes, _ = model.predict_batch_with_aux(boosted, batch, rng=rng, decoder_params=sample)
    decodes = np.asarray(decodes)
    assert decodes.any()
    assert not np.isin(decodes, [config.image_token_id]).any()
    assert not (decodes >= size).any()
