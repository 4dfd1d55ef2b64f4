"""RoIAlign: hand-derived values, gradients, level assignment, and parity with torchvision."""

import functools

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from maskrcnn_jax.ops import roi_align as ra

# 5 x 5 ramp: value = 5 y + x, so a bilinear sample at (y, x) is exactly 5 y + x and a bin's
# value is 5 * mean(y) + mean(x) of its samples, while samples stay inside the map.
RAMP = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)

# Box (1, 1, 3, 3), 4 x 4 bins, sr 2. aligned=False: the RoI spans [1, 3], bins 0.5 wide,
# bin p's samples at 1 + 0.5 p + {0.125, 0.375}: mean 1.25 + 0.5 p.
RAMP_UNALIGNED = np.array([[7.5 + 2.5 * p + 0.5 * q for q in range(4)] for p in range(4)])
# aligned=True shifts the RoI by -0.5 to [0.5, 2.5]: mean 0.75 + 0.5 p.
RAMP_ALIGNED = RAMP_UNALIGNED - 3.0


def align(features, boxes, **kwargs):
  kwargs = {"output_size": 4, "spatial_scale": 1.0, "sampling_ratio": 2, "aligned": True, **kwargs}
  return jax.jit(functools.partial(ra.roi_align, **kwargs))(features, boxes)


@pytest.mark.parametrize("impl", ra.IMPLEMENTATIONS)
@pytest.mark.parametrize("aligned, expected", [(False, RAMP_UNALIGNED), (True, RAMP_ALIGNED)])
def test_ramp(impl, aligned, expected):
  out = align(RAMP, np.array([[[1.0, 1.0, 3.0, 3.0]]], np.float32), aligned=aligned, impl=impl)
  assert out.shape == (1, 1, 4, 4, 1)
  np.testing.assert_allclose(out[0, 0, ..., 0], expected, atol=1e-5)


def test_half_scale_map_and_box_agree():
  # Scaling both the map and the box coordinates by 2 (spatial_scale 0.5) samples the same ramp.
  box = np.array([[[2.0, 2.0, 6.0, 6.0]]], np.float32)
  out = align(RAMP, box, spatial_scale=0.5, aligned=False)
  np.testing.assert_allclose(out[0, 0, ..., 0], RAMP_UNALIGNED, atol=1e-5)


def test_rectangular_output_and_int_size():
  box = np.array([[[1.0, 1.0, 3.0, 3.0]]], np.float32)
  out = align(RAMP, box, output_size=(2, 4), aligned=False)
  # Two bins of height 1 in y: sample means 1.5 and 2.5.
  expected = np.array([[5 * (1.5 + p) + 1.25 + 0.5 * q for q in range(4)] for p in range(2)])
  np.testing.assert_allclose(out[0, 0, ..., 0], expected, atol=1e-5)


def test_map_edges():
  boxes = np.array([[
      # Zero-size box, aligned=False: grown to 1 x 1 from (2, 2); bins 0.25, means 2.125 + .25 p.
      [2.0, 2.0, 2.0, 2.0],
      # Samples at y 4.25, 4.75 in (H - 1, H]: clamped onto row 4; x means 0.5.
      [0.0, 4.0, 1.0, 5.0],
      # Samples at y 4.75 (row 4) and 5.25 > H (contributes 0): half of 20.5.
      [0.0, 4.5, 1.0, 5.5],
      # Samples at y -0.75, -0.25 in [-1, 0): clamped onto row 0.
      [0.0, -1.0, 1.0, 0.0],
  ]], np.float32)
  out = align(RAMP, boxes, aligned=False, output_size=1)[0, :, 0, 0, 0]
  np.testing.assert_allclose(out[1:], [20.5, 10.25, 0.5], atol=1e-5)
  grown = align(RAMP, boxes[:, :1], aligned=False)[0, 0, ..., 0]
  np.testing.assert_allclose(
      grown, [[12.75 + 1.25 * p + 0.25 * q for q in range(4)] for p in range(4)], atol=1e-5)


@pytest.mark.parametrize("impl", ra.IMPLEMENTATIONS)
def test_box_outside_map_gives_zeros_and_zero_gradient(impl):
  boxes = np.array([[[7.0, 7.0, 9.0, 9.0], [-9.0, 1.0, -4.0, 3.0]]], np.float32)
  f = lambda x: align(x, boxes, impl=impl)
  np.testing.assert_array_equal(f(RAMP), 0.0)
  grad = jax.grad(lambda x: f(x).sum())(jnp.asarray(RAMP))
  np.testing.assert_array_equal(grad, 0.0)


def test_gradient_matches_finite_differences():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
  boxes = np.array([[[0.5, 1.0, 5.0, 4.5], [-1.0, -2.0, 3.0, 2.0]],
                    [[2.0, 2.0, 2.5, 8.0], [4.0, 0.0, 9.0, 3.0]]], np.float32)
  f = jax.jit(lambda x: ra.roi_align(x, boxes, output_size=3, spatial_scale=1.0, sampling_ratio=2,
                                     aligned=True))
  # RoIAlign is linear in the map, so a large step is exact up to rounding.
  jtu.check_grads(f, (features,), order=1, modes=("rev",), eps=1.0, atol=2e-3, rtol=2e-3)


def random_boxes(rng, b, n, size, min_side=0.0, max_side=None):
  max_side = max_side or size
  xy = rng.uniform(-0.2 * size, size, (b, n, 2))
  wh = rng.uniform(min_side, max_side, (b, n, 2))
  return np.concatenate([xy, xy + wh], -1).astype(np.float32)


@pytest.mark.parametrize("aligned", [False, True])
def test_einsum_equals_gather(aligned):
  rng = np.random.default_rng(1)
  features = rng.normal(size=(2, 9, 11, 4)).astype(np.float32)
  boxes = random_boxes(rng, 2, 12, 40.0)
  kw = dict(output_size=(3, 2), spatial_scale=0.25, sampling_ratio=2, aligned=aligned)
  np.testing.assert_allclose(align(features, boxes, impl="einsum", **kw),
                             align(features, boxes, impl="gather", **kw), atol=1e-5)
  levels = [rng.normal(size=(2, 32 // 2**i, 32 // 2**i, 4)).astype(np.float32) for i in range(4)]
  boxes = random_boxes(rng, 2, 12, 128.0)
  multi = functools.partial(ra.multilevel_roi_align, output_size=2, sampling_ratio=2,
                            aligned=aligned, canonical_box_size=32)
  np.testing.assert_allclose(jax.jit(functools.partial(multi, impl="einsum"))(levels, boxes),
                             jax.jit(multi)(levels, boxes), atol=1e-5)


def test_box_gradient_of_gather_matches_autodiff_of_einsum():
  rng = np.random.default_rng(4)
  features = rng.normal(size=(1, 8, 9, 2)).astype(np.float32)
  boxes = jnp.asarray(random_boxes(rng, 1, 6, 8.0, min_side=1.0))
  cotangent = rng.normal(size=(1, 6, 3, 3, 2)).astype(np.float32)
  def grad(impl):
    loss = lambda x, b: jnp.vdot(ra.roi_align(x, b, output_size=3, spatial_scale=1.0,
                                              sampling_ratio=2, aligned=True, impl=impl),
                                 cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(features, boxes)
  for a, b in zip(grad("gather"), grad("einsum")):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_bfloat16_maps_are_read_in_place_and_summed_in_float32():
  rng = np.random.default_rng(6)
  levels = [rng.normal(size=(2, 32 // 2**i, 32 // 2**i, 3)).astype(np.float32) for i in range(4)]
  boxes = random_boxes(rng, 2, 10, 128.0, min_side=2.0)
  multi = jax.jit(functools.partial(ra.multilevel_roi_align, output_size=3, sampling_ratio=2,
                                    aligned=True, canonical_box_size=32))
  half = [jnp.asarray(x, jnp.bfloat16) for x in levels]
  out = multi(half, boxes)
  assert out.dtype == jnp.float32
  # The same float32 arithmetic on the rounded maps: equal up to fusion reordering.
  ref = multi([x.astype(jnp.float32) for x in half], boxes)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  text = multi.lower(half, boxes).as_text()
  assert "tensor<2x1360x3xbf16>" in text  # The 4-level buffer, kept in bfloat16 ...
  assert "2x1360x3xf32" not in text and "2720x3xf32" not in text  # ... with no float32 copy.
  grads = jax.grad(lambda f: jnp.sum(multi(f, boxes) ** 2))(half)
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 4


def test_gradient_scatter_in_chunks_equals_one_scatter(monkeypatch):
  rng = np.random.default_rng(7)
  features = jnp.asarray(rng.normal(size=(2, 12, 10, 3)).astype(np.float32))
  boxes = jnp.asarray(random_boxes(rng, 2, 9, 12.0, min_side=1.0))
  cotangent = rng.normal(size=(2, 9, 2, 3, 3)).astype(np.float32)
  def grad():
    loss = lambda x: jnp.vdot(ra.roi_align(x, boxes, output_size=(2, 3), spatial_scale=1.0,
                                           sampling_ratio=2, aligned=True), cotangent)
    return jax.jit(jax.grad(loss))(features)
  whole = grad()
  monkeypatch.setattr(ra, "SCATTER_ROWS", 2 * 2 * 3 * 16 * 2)  # 2 boxes a chunk, 5 chunks.
  np.testing.assert_allclose(grad(), whole, rtol=1e-5, atol=1e-5)


def test_assign_levels():
  sides = np.array([224.0, 112.0, 448.0, 896.0, 10.0, 5000.0, 0.0, 223.0, 447.0])
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], -1)
  levels = jax.jit(functools.partial(ra.assign_levels, min_level=2, max_level=5))(boxes)
  np.testing.assert_array_equal(levels, [4, 3, 5, 5, 2, 5, 2, 3, 4])
  assert levels.dtype == jnp.int32


def test_multilevel_uses_each_boxes_level():
  rng = np.random.default_rng(2)
  levels = [rng.normal(size=(1, 64 // 2**i, 64 // 2**i, 2)).astype(np.float32) for i in range(4)]
  # Sides 20 (P2), 112 (P3), 224 (P4), 448 (P5): FPN eq. 1 with the 224 canonical size.
  boxes = np.array([[[3, 5, 23, 25], [10, 0, 122, 112], [0, 20, 224, 244], [1, 2, 449, 450]]],
                   np.float32)
  out = jax.jit(functools.partial(ra.multilevel_roi_align, output_size=3, sampling_ratio=2,
                                  aligned=True))(levels, boxes)
  for i in range(4):
    ref = align(levels[i], boxes[:, i:i + 1], output_size=3, spatial_scale=2.0 ** -(i + 2))
    np.testing.assert_allclose(out[:, i:i + 1], ref, atol=1e-6)


def test_bad_input_raises():
  with pytest.raises(ValueError, match="boxes must be"):
    ra.roi_align(RAMP, np.zeros((1, 4)), output_size=2, spatial_scale=1.0, sampling_ratio=2,
                 aligned=True)
  with pytest.raises(ValueError, match="sampling_ratio"):
    ra.roi_align(RAMP, np.zeros((1, 1, 4)), output_size=2, spatial_scale=1.0, sampling_ratio=-1,
                 aligned=True)
  with pytest.raises(ValueError, match="features must be"):
    ra.roi_align(RAMP[0], np.zeros((1, 1, 4)), output_size=2, spatial_scale=1.0,
                 sampling_ratio=2, aligned=True)


# --- Parity with torchvision (in its own process, tests/conftest.py). ---

REF = "tests/ops/torchvision_ops_ref.py"


def hostile_boxes(rng, b, n, size):
  """Random boxes plus boxes partly/wholly outside the map, tiny, zero-size and inverted ones."""
  boxes = random_boxes(rng, b, n, size, max_side=0.6 * size)
  special = np.array([[-5, -5, 3, 4], [size - 2, size - 3, size + 9, size + 1],
                      [size + 3, 2, size + 9, 8], [4, 4, 4, 4], [5, 5, 5.3, 5.2],
                      [7, 7, 5, 6], [-20, -20, -10, -12], [0, 0, size, size]], np.float32)
  boxes[:, :len(special)] = special
  return boxes


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [2, 0])  # 0: adaptive (up to 6 samples per bin here).
def test_roi_align_matches_torchvision(seed, aligned, sr, torch_reference):
  rng = np.random.default_rng(seed)
  b, h, w, c, n = 2, 13, 17, 3, 24
  features = rng.normal(size=(b, h, w, c)).astype(np.float32)
  boxes = hostile_boxes(rng, b, n, 4.0 * w)
  size, scale = (5, 4), 0.25
  pool = functools.partial(align, output_size=size, spatial_scale=scale, sampling_ratio=sr,
                           aligned=aligned, max_sampling_ratio=6)
  out = pool(features, boxes)
  cotangent = rng.normal(size=out.shape).astype(np.float32)
  grad = jax.grad(lambda x: jnp.sum(pool(x, boxes) * cotangent))(jnp.asarray(features))
  ref = torch_reference(REF, inputs={"features": features, "boxes": boxes,
                                     "cotangent": cotangent.reshape(b * n, *size, c)},
                        op="roi_align", output_size=size, spatial_scale=scale,
                        sampling_ratio=sr, aligned=aligned)
  np.testing.assert_allclose(out, ref["out"].reshape(out.shape), atol=1e-5)
  np.testing.assert_allclose(grad, ref["grad"], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_multilevel_matches_torchvision(seed, torch_reference):
  rng = np.random.default_rng(seed)
  b, image, c, n = 2, 256, 4, 40
  levels = [rng.normal(size=(b, image // 2**l, image // 2**l, c)).astype(np.float32)
            for l in range(2, 6)]
  boxes = hostile_boxes(rng, b, n, float(image))
  boxes[:, 8:16] = random_boxes(rng, b, 8, image, min_side=1.0, max_side=12.0)  # Level 2.
  out = jax.jit(functools.partial(ra.multilevel_roi_align, output_size=7, sampling_ratio=2,
                                  aligned=False))(levels, boxes)
  ref = torch_reference(REF, inputs={"boxes": boxes, **{f"level{l}": f for l, f in
                                                          enumerate(levels)}},
                        op="multiscale_roi_align", output_size=7, sampling_ratio=2,
                        image=image)["out"].reshape(out.shape)
  # Sample coordinates up to 64 map pixels carry float32 rounding of ~4e-6 pixel, which
  # XLA's fused arithmetic rounds differently from torchvision's kernel.
  np.testing.assert_allclose(out, ref, atol=5e-5)


@pytest.mark.parametrize("aligned", [False, True])
def test_adaptive_equals_fixed_ratio_of_the_same_count(aligned):
  """sampling_ratio=0 takes ceil(side / bins) samples per bin, per box and axis."""
  rng = np.random.default_rng(0)
  features = rng.normal(size=(1, 24, 24, 2)).astype(np.float32)
  # 4 bins: side 7.5 -> 2 samples per bin (rows), 13 -> 4 (columns); an empty box gives
  # zeros when aligned (unaligned boxes are at least 1 x 1: one sample).
  boxes = np.array([[[2.0, 3.0, 15.0, 10.5], [5.0, 5.0, 5.0, 5.0]]], np.float32)
  out = align(features, boxes, output_size=4, sampling_ratio=0, aligned=aligned,
              max_sampling_ratio=6)
  y0, x0 = (boxes[0, 0, 1] - 0.5 * aligned), (boxes[0, 0, 0] - 0.5 * aligned)
  hb, wb = (boxes[0, 0, 3] - boxes[0, 0, 1]) / 4, (boxes[0, 0, 2] - boxes[0, 0, 0]) / 4
  def bilinear(y, x):
    y0_, x0_ = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - y0_, x - x0_
    f = features[0]
    return ((1 - fy) * (1 - fx) * f[y0_, x0_] + (1 - fy) * fx * f[y0_, x0_ + 1]
            + fy * (1 - fx) * f[y0_ + 1, x0_] + fy * fx * f[y0_ + 1, x0_ + 1])
  want = np.zeros((4, 4, 2), np.float32)
  for p in range(4):
    for q in range(4):
      want[p, q] = np.mean([bilinear(y0 + p * hb + (i + 0.5) * hb / 2,
                                     x0 + q * wb + (j + 0.5) * wb / 4)
                            for i in range(2) for j in range(4)], axis=0)
  np.testing.assert_allclose(out[0, 0], want, atol=1e-5)
  if aligned:
    np.testing.assert_array_equal(out[0, 1], 0.0)


def test_adaptive_overflow_counts_capped_boxes():
  boxes = np.array([[[0, 0, 64, 8], [0, 0, 200, 8], [0, 0, 0, 0]]], np.float32)
  # Level 2 (sqrt(area) < 112): 200 / 4 / 7 bins -> 8 samples > 6; 64 / 4 / 7 -> 3.
  count = ra.adaptive_overflow(boxes, output_size=7, aligned=True, max_sampling_ratio=6)
  np.testing.assert_array_equal(count, [1])
  count = ra.adaptive_overflow(boxes, output_size=7, aligned=True, max_sampling_ratio=8)
  np.testing.assert_array_equal(count, [0])
