"""conv2d: torch-padded values, and its CPU gradients (row-chunked kernel gradient, per-phase
strided input gradient) equal XLA's; tap_matmul (maps smaller than the kernel) equals it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from maskrcnn_jax.ops import conv as conv_ops


def _reference(x, kernel, stride):
  pad = kernel.shape[0] // 2
  return lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _grads(fn, x, kernel, stride):
  loss = lambda x, w: jnp.sum(jnp.sin(fn(x, w, stride)))
  return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)


def test_golden_values():
  # 3x3 ones kernel on a 3x3 ramp: each output sums its zero-padded neighbourhood.
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)
  out = conv_ops.conv2d(x, jnp.ones((3, 3, 1, 1)), 1)[0, ..., 0]
  np.testing.assert_array_equal(out, [[8, 15, 12], [21, 36, 27], [20, 33, 24]])
  out = conv_ops.conv2d(x, jnp.ones((3, 3, 1, 1)), 2)[0, ..., 0]
  np.testing.assert_array_equal(out, [[8, 12], [20, 24]])


@pytest.mark.parametrize("shape,k,stride,rows", [
    ((1, 9, 8, 4, 5), 3, 1, 2),
    ((2, 11, 7, 3, 4), 3, 2, 3),
    ((1, 13, 10, 2, 3), 7, 2, 4),
    ((1, 6, 6, 2, 2), 3, 1, 100),
])
def test_chunked_kernel_grad_equals_xla(shape, k, stride, rows):
  b, h, w, cin, cout = shape
  x = jax.random.normal(jax.random.key(0), (b, h, w, cin))
  kernel = jax.random.normal(jax.random.key(1), (k, k, cin, cout))
  y, vjp = jax.vjp(lambda w: _reference(x, w, stride), kernel)
  g = jax.random.normal(jax.random.key(2), y.shape)
  got = conv_ops.chunked_kernel_grad(x, kernel, g, stride, rows)
  np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_equal_xla_on_a_chunked_map(stride):
  # 8 MiB of float32 input: large enough that the CPU gradient is chunked.
  x = jax.random.normal(jax.random.key(0), (1, 64, 64, 512))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 512, 4)) * 0.05
  np.testing.assert_allclose(conv_ops.conv2d(x, kernel, stride), _reference(x, kernel, stride),
                             rtol=1e-6, atol=1e-6)
  for got, want in zip(_grads(conv_ops.conv2d, x, kernel, stride),
                       _grads(_reference, x, kernel, stride)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_bfloat16_gradients():
  x = jax.random.normal(jax.random.key(0), (1, 16, 12, 8), jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 8, 8), jnp.bfloat16)
  dx, dkernel = _grads(conv_ops.conv2d, x, kernel, 1)
  assert dx.dtype == jnp.bfloat16 and dkernel.dtype == jnp.bfloat16
  want = _grads(_reference, x.astype(jnp.float32), kernel.astype(jnp.float32), 1)
  np.testing.assert_allclose(dkernel.astype(jnp.float32), want[1], rtol=0.05,
                             atol=0.02 * float(jnp.abs(want[1]).max()))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_conv1x1_values_and_gradients_equal_the_einsum(dtype):
  x = jax.random.normal(jax.random.key(0), (2, 5, 7, 24)).astype(dtype)
  kernel = jax.random.normal(jax.random.key(1), (24, 16)).astype(dtype)
  g = jax.random.normal(jax.random.key(2), (2, 5, 7, 16)).astype(dtype)
  einsum = lambda x, k: jnp.einsum("bhwc,cd->bhwd", x, k)
  got, got_vjp = jax.vjp(conv_ops.conv1x1, x, kernel)
  want, want_vjp = jax.vjp(einsum, x, kernel)
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_array_equal(got, want)
  for a, b in zip(got_vjp(g), want_vjp(g)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=tol, atol=tol * np.abs(np.asarray(b, np.float32)).max())


@pytest.mark.parametrize("shape,k,stride", [
    ((1, 13, 14, 5, 7), 3, 2),
    ((2, 12, 9, 3, 4), 3, 2),
    ((1, 15, 16, 3, 4), 7, 2),
    ((1, 11, 10, 3, 2), 5, 3),
])
def test_phase_input_grad_equals_xla(shape, k, stride):
  b, h, w, cin, cout = shape
  x = jax.random.normal(jax.random.key(0), (b, h, w, cin))
  kernel = jax.random.normal(jax.random.key(1), (k, k, cin, cout))
  y, vjp = jax.vjp(lambda x: _reference(x, kernel, stride), x)
  g = jax.random.normal(jax.random.key(2), y.shape)
  got = conv_ops.phase_input_grad(g, kernel, stride, (h, w))
  np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,k,stride", [((2, 2), 3, 1), ((1, 2), 3, 1), ((2, 1), 3, 2),
                                         ((5, 3), 7, 2), ((4, 4), 3, 2)])
def test_tap_matmul_values_and_gradients_equal_xla(hw, k, stride):
  x = jax.random.normal(jax.random.key(0), (2, *hw, 5))
  kernel = jax.random.normal(jax.random.key(1), (k, k, 5, 4))
  np.testing.assert_allclose(conv_ops.tap_matmul(x, kernel, stride),
                             _reference(x, kernel, stride), rtol=1e-5, atol=1e-5)
  for got, want in zip(_grads(conv_ops.tap_matmul, x, kernel, stride),
                       _grads(_reference, x, kernel, stride)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_tap_matmul_golden_values():
  x = jnp.arange(9.0).reshape(1, 3, 3, 1)  # As test_golden_values.
  np.testing.assert_array_equal(conv_ops.tap_matmul(x, jnp.ones((3, 3, 1, 1)), 2)[0, ..., 0],
                                [[8, 12], [20, 24]])
