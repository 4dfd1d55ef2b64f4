"""Anchors: hand-derived first rows, level shapes, parity with torchvision's AnchorGenerator."""

import numpy as np
import pytest

from maskrcnn_jax.ops import anchors

REF = "tests/ops/torchvision_ops_ref.py"  # torchvision in its own process (tests/conftest.py).


# Size 32, ratios (0.5, 1, 2): sqrt(.5) h-ratio gives 45.25 x 22.63 -> halves rounded 23, 11.
FIRST_CELL = np.array([[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]], np.float32)


def test_first_rows():
  levels = anchors.generate_anchors(64)
  np.testing.assert_array_equal(levels[0][:3], FIRST_CELL)
  np.testing.assert_array_equal(levels[0][3:6], FIRST_CELL + [4, 0, 4, 0])  # next column
  np.testing.assert_array_equal(levels[0][16 * 3:16 * 3 + 3], FIRST_CELL + [0, 4, 0, 4])  # next row
  # 64 x 64 on P3: 128 / 64 = 2 -> 45.25 x 90.51 halves round to 45, 23 at ratio 0.5.
  np.testing.assert_array_equal(levels[1][0], [-45, -23, 45, 23])


def test_level_shapes_round_up():
  levels = anchors.generate_anchors((100, 60))
  assert [x.shape for x in levels] == [(25 * 15 * 3, 4), (13 * 8 * 3, 4), (7 * 4 * 3, 4),
                                       (4 * 2 * 3, 4), (2 * 1 * 3, 4)]
  assert all(x.dtype == np.float32 for x in levels)
  flat = anchors.generate_anchors_concat((100, 60))
  np.testing.assert_array_equal(flat, np.concatenate(levels))
  with pytest.raises(ValueError, match="sizes has 2 levels"):
    anchors.generate_anchors(64, sizes=(32, 64))


def test_several_sizes_per_level():
  levels = anchors.generate_anchors(8, strides=(8,), sizes=((32, 64),), aspect_ratios=(1.0,))
  np.testing.assert_array_equal(levels[0], [[-16, -16, 16, 16], [-32, -32, 32, 32]])


@pytest.mark.parametrize("image", [256, 320])
def test_matches_torchvision(image, torch_reference):
  sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
  ref = torch_reference(REF, op="anchors", image=image, sizes=sizes, ratios=ratios)["anchors"]
  np.testing.assert_array_equal(anchors.generate_anchors_concat(image, sizes=sizes,
                                                                aspect_ratios=ratios), ref)


def test_unrounded_anchors_are_detectron2s():
  """detectron2's DefaultAnchorGenerator: w = sqrt(size^2 / ratio), h = ratio * w, float64."""
  sizes, ratios = (32, 64), (0.5, 1.0, 2.0)
  levels = anchors.generate_anchors(16, strides=(4, 8), sizes=sizes, aspect_ratios=ratios,
                                    rounded=False)
  for level, (size, stride) in enumerate(zip(sizes, (4, 8))):
    cell = []
    for r in ratios:
      w = (size**2 / r)**0.5
      cell.append([-w / 2, -r * w / 2, w / 2, r * w / 2])
    cell = np.array(cell, np.float32)
    n = 16 // stride
    shifts = np.array([[x, y, x, y] for y in range(0, 16, stride) for x in range(0, 16, stride)],
                      np.float32)
    np.testing.assert_array_equal(levels[level], (shifts[:, None] + cell[None]).reshape(-1, 4))
    assert levels[level].shape == (n * n * 3, 4)
  rounded = anchors.generate_anchors(16, strides=(4,), sizes=(32,), aspect_ratios=ratios)
  assert not np.array_equal(rounded[0], levels[0])  # Ratio 0.5: corners 22.6 rounded to 23.
