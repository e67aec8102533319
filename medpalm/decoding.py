"""Greedy, temperature (top-k / top-p) and beam-search decoding, each one `lax.while_loop`.

The loops never see images or the prompt: the caller prefills the KV cache once (the ViT runs
there) and hands over the next-token logits of the last prompt position, the cache, and a
`step_fn(tokens int32[B, 1], positions int32[B, 1], cache) -> (logits float32[B, V], cache)` that
extends the cache by one token. Every row stops at its own EOS; decodes are fixed-length
`int32[B, num_decodes, max_decode_length]`, zero after EOS (EOS itself is kept), sorted by score
ascending (best last, as T5X returns them). Scores are sums of the model's log-probabilities
(beam search: divided by the length penalty).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

Array = jax.Array
StepFn = Callable[[Array, Array, Any], tuple[Array, Any]]
NEG_INF = -1.0e7  # finite "minus infinity": keeps arithmetic on dead beams NaN-free


@flax.struct.dataclass
class Prefilled:
  """What decoding starts from.

  logits: float32[B, V] next-token logits after the prompt.
  cache: the KV cache pytree after the prefill (batch on axis `cache_batch_axis` of each leaf).
  positions: int32[B] position of the first generated token (= prompt length) per row.
  limits: int32[B] how many tokens each row may generate (the cache's room), or None.
  """

  logits: Array
  cache: Any
  positions: Array
  limits: Array | None = None
  cache_batch_axis: int = flax.struct.field(pytree_node=False, default=0)


def mask_logits(logits: Array, valid_size: int, banned_ids: tuple[int, ...] = ()) -> Array:
  """float[..., V] logits with the ids no decode may emit set to NEG_INF.

  `valid_size`: ids at or above it are rows the embedding pads the vocabulary with (to a
  multiple of the model-parallel shards) and have no piece; `banned_ids`: ids the vocabulary
  has but generated text must not hold (the image placeholder, which only the prompt carries).
  """
  ids = jnp.arange(logits.shape[-1])
  banned = ids >= valid_size
  for i in banned_ids:
    banned = banned | (ids == i)
  return jnp.where(banned, jnp.asarray(NEG_INF, logits.dtype), logits)


def _repeat(tree: Any, n: int, axis: int) -> Any:
  """Repeats every leaf n times along `axis` ([a, b] -> [a, a, b, b] for n = 2)."""
  return jax.tree.map(lambda x: jnp.repeat(x, n, axis=axis), tree)


def _cache_gather(cache: Any, index: Array, axis: int) -> Any:
  return jax.tree.map(lambda x: jnp.take(x, index, axis=axis), cache)


def _filter_logits(logits: Array, topk: int, topp: float) -> Array:
  """Keeps the `topk` largest logits and the smallest set whose probability reaches `topp`."""
  if topk:
    kth = jax.lax.top_k(logits, topk)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if 0.0 < topp < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # The last logit kept is the first whose cumulative probability reaches topp.
    cutoff_index = jnp.sum(cum < topp, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, NEG_INF, logits)
  return logits


def temperature_sample(
    start: Prefilled,
    step_fn: StepFn,
    *,
    max_decode_length: int,
    eos_id: int,
    rng: Array | None = None,
    num_decodes: int = 1,
    temperature: float = 0.0,
    topk: int = 0,
    topp: float = 0.0,
) -> tuple[Array, Array]:
  """Greedy decoding (`temperature == 0`, the default: the paper's decoding) or sampling at
  `temperature > 0` from `rng`, which sampling then requires.

  Returns (decodes int32[B, num_decodes, L], scores float32[B, num_decodes]).
  """
  if num_decodes < 1:
    raise ValueError(f"num_decodes must be >= 1, got {num_decodes}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  greedy = temperature == 0.0
  if not greedy and rng is None:
    raise ValueError(
        f"sampling at temperature {temperature} needs an rng (predict_batch(..., rng=key)); "
        "temperature 0 decodes greedily"
    )
  batch = start.logits.shape[0]
  logits = jnp.repeat(start.logits, num_decodes, axis=0)
  cache = _repeat(start.cache, num_decodes, start.cache_batch_axis)
  positions = jnp.repeat(start.positions, num_decodes, axis=0)
  limits = (
      jnp.full((batch,), max_decode_length, jnp.int32) if start.limits is None else start.limits
  )
  limits = jnp.repeat(limits, num_decodes, axis=0)
  rows = batch * num_decodes
  rng = jax.random.key(0) if rng is None else rng

  def cond(state):
    i, _, _, _, done, _, _ = state
    return (i < max_decode_length) & ~jnp.all(done)

  def body(state):
    i, tokens, logits, cache, done, scores, rng = state
    rng, key = jax.random.split(rng)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if greedy:
      token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      filtered = _filter_logits(logits.astype(jnp.float32) / temperature, topk, topp)
      token = jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    scores = scores + jnp.where(done, 0.0, jnp.take_along_axis(log_probs, token[:, None], 1)[:, 0])
    tokens = tokens.at[:, i].set(token)
    done = done | (token == eos_id) | (i + 1 >= limits)
    logits, cache = step_fn(token[:, None], (positions + i)[:, None], cache)
    return i + 1, tokens, logits, cache, done, scores, rng

  state = (
      jnp.int32(0),
      jnp.zeros((rows, max_decode_length), jnp.int32),
      logits,
      cache,
      jnp.zeros((rows,), bool),
      jnp.zeros((rows,), jnp.float32),
      rng,
  )
  _, tokens, _, _, _, scores, _ = jax.lax.while_loop(cond, body, state)
  tokens = tokens.reshape(batch, num_decodes, max_decode_length)
  scores = scores.reshape(batch, num_decodes)
  order = jnp.argsort(scores, axis=1)
  return jnp.take_along_axis(tokens, order[..., None], 1), jnp.take_along_axis(scores, order, 1)


def brevity_penalty(length: Array, alpha: float) -> Array:
  """GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 ranks by log-probability."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(
    start: Prefilled,
    step_fn: StepFn,
    *,
    max_decode_length: int,
    eos_id: int,
    num_decodes: int = 4,
    alpha: float = 0.6,
    rng: Array | None = None,
) -> tuple[Array, Array]:
  """Beam search with `num_decodes` beams and length penalty `alpha`.

  Keeps `num_decodes` alive (not ended) and `num_decodes` finished hypotheses per example;
  stops when no alive beam can still beat the worst finished one, or at the maximum length.
  Returns (decodes int32[B, K, L], scores float32[B, K]) sorted ascending.
  """
  del rng  # deterministic
  k, length = num_decodes, max_decode_length
  if k < 1:
    raise ValueError(f"num_decodes (beam size) must be >= 1, got {k}")
  batch, vocab = start.logits.shape
  axis = start.cache_batch_axis
  cache = _repeat(start.cache, k, axis)
  logits = jnp.repeat(start.logits, k, axis=0)
  positions = jnp.repeat(start.positions, k, axis=0)
  limits = jnp.full((batch,), length, jnp.int32) if start.limits is None else start.limits
  # All beams start identical: only beam 0 may expand at the first step.
  alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
  max_penalty = brevity_penalty(jnp.array(length), alpha)

  def cond(state):
    i, _, alive_logp, _, _, finished_scores, _ = state
    best_alive = alive_logp[:, 0] / max_penalty  # alive_logp is sorted descending
    worst_finished = finished_scores[:, -1]
    return (i < length) & ~jnp.all(worst_finished >= best_alive)

  def body(state):
    i, alive_seqs, alive_logp, logits, cache, finished_scores, finished_seqs = state
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), -1).reshape(batch, k, vocab)
    candidates = (alive_logp[..., None] + log_probs).reshape(batch, k * vocab)
    cand_logp, cand_index = jax.lax.top_k(candidates, 2 * k)
    beam, token = cand_index // vocab, (cand_index % vocab).astype(jnp.int32)
    seqs = jnp.take_along_axis(alive_seqs, beam[..., None], axis=1).at[:, :, i].set(token)
    is_eos = (token == eos_id) | (i + 1 >= limits)[:, None]  # out of room also ends a beam
    # Finished: the 2k candidates that end here join the k finished so far; keep the best k.
    new_scores = jnp.where(is_eos, cand_logp / brevity_penalty(i + 1, alpha), NEG_INF)
    all_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
    all_seqs = jnp.concatenate([finished_seqs, seqs], axis=1)
    finished_scores, top = jax.lax.top_k(all_scores, k)
    finished_seqs = jnp.take_along_axis(all_seqs, top[..., None], axis=1)
    # Alive: the best k candidates that did not end.
    alive_logp, top = jax.lax.top_k(jnp.where(is_eos, NEG_INF, cand_logp), k)
    alive_seqs = jnp.take_along_axis(seqs, top[..., None], axis=1)
    parent = jnp.take_along_axis(beam, top, axis=1)
    flat_parent = (jnp.arange(batch)[:, None] * k + parent).reshape(-1)
    cache = _cache_gather(cache, flat_parent, axis)
    tokens = jnp.take_along_axis(token, top, axis=1).reshape(-1)
    logits, cache = step_fn(tokens[:, None], (positions + i)[:, None], cache)
    return i + 1, alive_seqs, alive_logp, logits, cache, finished_scores, finished_seqs

  state = (
      jnp.int32(0),
      jnp.zeros((batch, k, length), jnp.int32),
      alive_logp,
      logits,
      cache,
      jnp.full((batch, k), NEG_INF),
      jnp.zeros((batch, k, length), jnp.int32),
  )
  _, alive_seqs, alive_logp, _, _, finished_scores, finished_seqs = jax.lax.while_loop(
      cond, body, state
  )
  # Rows where fewer than k hypotheses finished are completed with the best alive ones.
  all_scores = jnp.concatenate([finished_scores, alive_logp / max_penalty], axis=1)
  all_seqs = jnp.concatenate([finished_seqs, alive_seqs], axis=1)
  scores, top = jax.lax.top_k(all_scores, k)
  seqs = jnp.take_along_axis(all_seqs, top[..., None], axis=1)
  return seqs[:, ::-1], scores[:, ::-1]


DECODE_FNS = {"temperature_sample": temperature_sample, "beam_search": beam_search}


def decode_params_error(decode_fn: Callable, params: dict) -> str | None:
  """A message naming keys that `decode_fn` does not take, or None."""
  fn = decode_fn.func if isinstance(decode_fn, functools.partial) else decode_fn
  allowed = set(fn.__code__.co_varnames[: fn.__code__.co_argcount + fn.__code__.co_kwonlyargcount])
  allowed -= {"start", "step_fn", "max_decode_length", "eos_id", "rng", "num_decodes"}
  unknown = sorted(set(params) - allowed)
  if unknown:
    return f"decoder_params {unknown} not accepted by {fn.__name__} (accepts {sorted(allowed)})"
  return None
