"""2-D convolution with torch's symmetric padding and a CPU-friendly kernel gradient.

XLA:CPU computes a convolution's kernel gradient as one window convolution over the whole
feature map; once the map outgrows the cache it runs 4-6x slower than on cache-sized
pieces (a 3x3, 256-channel kernel gradient: 1.43 s at 200x200, 0.30 s in 10-row
pieces; `bench/profile.py`, `docs/benchmarks.md`). On CPU, `conv2d`'s gradient therefore
sums the kernel gradients of row chunks of the output (each with its input halo); other
backends take XLA's own gradient. Values equal `lax.conv_general_dilated`'s.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")
# Input bytes per row chunk, and the input size from which chunking pays (measured on a
# 32 MiB-L3 x86 CPU: below ~8 MiB XLA's single window convolution is as fast).
_CHUNK_BYTES = 2 << 20
_MIN_CHUNKED_BYTES = 8 << 20


def _conv(x: jax.Array, kernel: jax.Array, stride: int, padding) -> jax.Array:
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DIMS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """k x k convolution, padding k // 2 on every side (torch's `padding=k // 2`).

  x: [B, H, W, Cin]; kernel: [k, k, Cin, Cout], k odd
  -> [B, (H - 1) // stride + 1, (W - 1) // stride + 1, Cout], in x's dtype.
  """
  pad = kernel.shape[0] // 2
  return _conv(x, kernel, stride, ((pad, pad), (pad, pad)))


def _forward(x, kernel, stride):
  return conv2d.fun(x, kernel, stride), (x, kernel)


def chunked_kernel_grad(x: jax.Array, kernel: jax.Array, g: jax.Array, stride: int,
                        rows: int) -> jax.Array:
  """The kernel gradient of `conv2d` as a sum over chunks of `rows` output rows.

  x: [B, H, W, Cin]; kernel: [k, k, Cin, Cout]; g (output cotangent): [B, Ho, Wo, Cout]
  -> [k, k, Cin, Cout], accumulated in float32, in kernel's dtype.
  """
  k, pad = kernel.shape[0], kernel.shape[0] // 2
  ho = g.shape[1]
  # Enough bottom padding that the last chunk's window is complete.
  bottom = max(stride * (ho - 1) + k - (x.shape[1] + pad), 0)
  xp = jnp.pad(x, ((0, 0), (pad, bottom), (0, 0), (0, 0)))
  total = jnp.zeros(kernel.shape, jnp.float32)
  for start in range(0, ho, rows):
    stop = min(start + rows, ho)
    piece = xp[:, stride * start:stride * (stop - 1) + k]
    _, vjp = jax.vjp(lambda w, piece=piece: _conv(piece, w, stride, ((0, 0), (pad, pad))),
                     kernel)
    total = total + vjp(g[:, start:stop])[0].astype(jnp.float32)
  return total.astype(kernel.dtype)


def _backward(stride, residuals, g):
  x, kernel = residuals
  conv = lambda x, w: conv2d.fun(x, w, stride)
  dx = jax.vjp(lambda x: conv(x, kernel), x)[1](g)[0]
  whole = lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]
  row_bytes = x.shape[0] * x.shape[2] * x.shape[3] * x.dtype.itemsize
  rows = max(_CHUNK_BYTES // row_bytes, 1)
  if x.shape[1] * row_bytes < _MIN_CHUNKED_BYTES or rows >= g.shape[1]:
    return dx, whole(x, kernel, g)
  chunked = lambda x, w, g: chunked_kernel_grad(x, w, g, stride, rows)
  return dx, lax.platform_dependent(x, kernel, g, cpu=chunked, default=whole)


conv2d.defvjp(_forward, _backward)


@jax.custom_vjp
def conv1x1(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1x1 convolution as a channel matmul. x: [B, H, W, Cin]; kernel: [Cin, Cout] -> [B, H, W, Cout].

  Its kernel gradient contracts the pixels of x and g in the order `x^T g`: XLA:CPU then
  runs it as a YNNPACK matmul (transposing x), where JAX's own transpose rule (`(g^T x)^T`)
  gets a plain dot, 10-20% slower per res4 1x1 convolution (forward + backward).
  """
  return jnp.einsum("bhwc,cd->bhwd", x, kernel)


def _forward1x1(x, kernel):
  return conv1x1(x, kernel), (x, kernel)


def _backward1x1(residuals, g):
  x, kernel = residuals
  return (jnp.einsum("bhwd,cd->bhwc", g, kernel).astype(x.dtype),
          jnp.einsum("bhwc,bhwd->cd", x, g).astype(kernel.dtype))


conv1x1.defvjp(_forward1x1, _backward1x1)
