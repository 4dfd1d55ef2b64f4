"""Elementwise losses in float32 (torch's definitions, no reduction)."""

import jax
import jax.numpy as jnp


def sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Binary cross-entropy with logits, stable for large |logits|. [...] -> [...] float32."""
  logits = logits.astype(jnp.float32)
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def smooth_l1(x: jax.Array, y: jax.Array, *, beta: float) -> jax.Array:
  """torch's smooth_l1_loss: 0.5 d^2 / beta where |d| < beta, else |d| - beta / 2."""
  d = jnp.abs(x.astype(jnp.float32) - y)
  return jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """logits: [..., K] and integer labels [...] -> [...] float32."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
