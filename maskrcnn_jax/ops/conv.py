"""2-D convolution with torch's symmetric padding and a CPU-friendly kernel gradient.

XLA:CPU computes a convolution's kernel gradient as one window convolution over the whole
feature map; once the map outgrows the cache it runs 4-6x slower than on cache-sized
pieces (a 3x3, 256-channel kernel gradient: 1.43 s at 200x200, 0.30 s in 10-row
pieces; `bench/profile.py`, `docs/benchmarks.md`). On CPU, `conv2d`'s gradient therefore
sums the kernel gradients of row chunks of the output (each with its input halo). A strided
convolution's input gradient is, in XLA, a convolution of the zero-dilated cotangent, which
XLA:CPU runs outside its fast convolution library (res3's first 3x3: ~45 ms at 800²); on CPU
it is computed as stride² stride-1 convolutions, one per output phase (~11 ms). Other
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


def phase_input_grad(g: jax.Array, kernel: jax.Array, stride: int, size: tuple[int, int]
                     ) -> jax.Array:
  """The input gradient of `conv2d` as one stride-1 convolution of g per output phase.

  Input pixel r of the padded map receives g[i] W[t] for s i + t = r: for the phase
  r = s m + p that is a correlation of g with the taps W[p], W[p + s], ... reversed.
  g (output cotangent): [B, Ho, Wo, Cout]; kernel: [k, k, Cin, Cout], stride <= k;
  size: x's (H, W) -> [B, H, W, Cin].
  """
  pad = kernel.shape[0] // 2
  ho, wo = g.shape[1:3]
  phases = [-(-(n + 2 * pad) // stride) for n in size]  # rows / cols of each phase
  rows = []
  for py in range(stride):
    cols = []
    for px in range(stride):
      taps = kernel[py::stride][::-1, px::stride][:, ::-1]  # [ny, nx, Cin, Cout]
      padding = ((taps.shape[0] - 1, phases[0] - ho), (taps.shape[1] - 1, phases[1] - wo))
      cols.append(lax.conv_general_dilated(g, jnp.swapaxes(taps, 2, 3), (1, 1), padding,
                                           dimension_numbers=_DIMS))
    rows.append(jnp.stack(cols, axis=3))  # [B, My, Mx, px, Cin]
  full = jnp.stack(rows, axis=2)  # [B, My, py, Mx, px, Cin]
  full = full.reshape(g.shape[0], phases[0] * stride, phases[1] * stride, -1)
  return full[:, pad:pad + size[0], pad:pad + size[1]]


def _backward(stride, residuals, g):
  x, kernel = residuals
  conv = lambda x, w: conv2d.fun(x, w, stride)
  xla_dx = lambda g, w: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]
  if 1 < stride <= kernel.shape[0]:
    phased = lambda g, w: phase_input_grad(g, w, stride, x.shape[1:3]).astype(x.dtype)
    dx = lax.platform_dependent(g, kernel, cpu=phased, default=xla_dx)
  else:
    dx = xla_dx(g, kernel)
  whole = lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]
  row_bytes = x.shape[0] * x.shape[2] * x.shape[3] * x.dtype.itemsize
  rows = max(_CHUNK_BYTES // row_bytes, 1)
  if x.shape[1] * row_bytes < _MIN_CHUNKED_BYTES or rows >= g.shape[1]:
    return dx, whole(x, kernel, g)
  chunked = lambda x, w, g: chunked_kernel_grad(x, w, g, stride, rows)
  return dx, lax.platform_dependent(x, kernel, g, cpu=chunked, default=whole)


conv2d.defvjp(_forward, _backward)


def tap_matmul(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """`conv2d` as one matmul over the k x k shifted (tapped) copies of the padded input.

  For maps smaller than the kernel (ResNet's res5 on small images): XLA:CPU runs a 3x3,
  512-channel convolution of a 2x2 map about 6x slower than this matmul (25 ms against
  4 ms, forward, batch 4), although it has fewer flops than one of a 3x3 map (4 ms). Its
  gradients are slices and matmuls too. Values equal `conv2d`'s up to float rounding.

  x: [B, H, W, Cin]; kernel: [k, k, Cin, Cout], k odd -> `conv2d`'s shape, in x's dtype.
  """
  k, pad = kernel.shape[0], kernel.shape[0] // 2
  ho, wo = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  taps = jnp.stack([xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
                    for i in range(k) for j in range(k)], axis=3)  # [B, Ho, Wo, k * k, Cin]
  return jnp.einsum("bhwtc,tcd->bhwd", taps, kernel.reshape(k * k, *kernel.shape[2:]))


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
