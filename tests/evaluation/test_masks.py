import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax.evaluation import masks


def test_boxes_to_original_divides_by_scale_and_clips():
  info = (40, 60, 2.0, 80, 120)
  boxes = np.array([[10, 20, 50, 60], [-4, 70, 130, 100]], np.float32)
  np.testing.assert_allclose(masks.boxes_to_original(boxes, info),
                             [[5, 10, 25, 30], [0, 35, 60, 40]])


def test_paste_full_mask_fills_its_box_exactly():
  info = (20, 30, 2.0, 40, 60)
  out = masks.paste_masks(np.ones((1, 28, 28), np.float32),
                          np.array([[10, 4, 30, 24]], np.float32), info)
  assert out.shape == (1, 20, 30) and out.dtype == np.float32
  expected = np.zeros((20, 30), bool)
  expected[2:12, 5:15] = True
  np.testing.assert_array_equal(out[0] >= 0.5, expected)
  np.testing.assert_allclose(out[0][expected], 1.0, atol=1e-6)


def test_paste_hand_values_two_by_two():
  # Box 4 px wide, mask 2 cells: pixel centres 0.5..3.5 sample u = -0.25, 0.25, 0.75, 1.25:
  # weights (zero padding outside the mask) give 0.75·a, 0.75·a + 0.25·b, 0.25·a + 0.75·b,
  # 0.75·b along x.
  mask = np.array([[[1.0, 0.0], [1.0, 0.0]]], np.float32)
  out = masks.paste_masks(mask, np.array([[0, 0, 4, 2]], np.float32), (2, 4, 1.0, 2, 4))
  np.testing.assert_allclose(out[0, 0], [0.75, 0.75, 0.25, 0.0], atol=1e-6)


def test_scale_pad_round_trip_recovers_mask():
  h, w, scale = 60, 80, 1.6
  yy, xx = np.mgrid[:h, :w]
  original = ((xx - 45) / 25.0) ** 2 + ((yy - 28) / 17.0) ** 2 <= 1  # An ellipse.
  ys, xs = np.nonzero(original)
  box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
  crop = original[int(box[1]):int(box[3]), int(box[0]):int(box[2])].astype(np.float32)
  small = np.asarray(Image.fromarray(crop).resize((28, 28), Image.Resampling.BILINEAR))
  info = (h, w, scale, round(h * scale), round(w * scale))
  pasted = masks.paste_masks(small[None], box[None] * scale, info)[0] >= 0.5
  iou = (pasted & original).sum() / (pasted | original).sum()
  assert iou >= 0.9, iou


def test_paste_matches_grid_sample(torch_reference):
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(5, 28, 28)).astype(np.float32)
  xy = rng.uniform(0, 40, size=(5, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(3, 30, size=(5, 2))], 1).astype(np.float32)
  h, w = 50, 70
  ours = masks.paste_masks(probs, boxes, (h, w, 1.0, h, w))
  # detectron2 `_do_paste_mask`: pixel centres normalised to the box, grid_sample.
  ref = torch_reference("tests/ops/torchvision_ops_ref.py",
                        inputs={"boxes": boxes, "probs": probs}, op="paste", height=h,
                        width=w)["pasted"]
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_paste_rejects_bad_shapes():
  with pytest.raises(ValueError, match="masks must be"):
    masks.paste_masks(np.ones((2, 28, 14)), np.zeros((2, 4)), (10, 10, 1, 10, 10))
  with pytest.raises(ValueError, match="boxes must be"):
    masks.paste_masks(np.ones((2, 28, 28)), np.zeros((3, 4)), (10, 10, 1, 10, 10))
  with pytest.raises(ValueError, match="finite"):
    masks.paste_masks(np.ones((1, 28, 28)), np.array([[0, 0, np.inf, 4]]), (10, 10, 1, 10, 10))
  with pytest.raises(ValueError, match="image_info"):
    masks.paste_masks(np.ones((2, 28, 28)), np.zeros((2, 4)), (10, 10, 1))


def test_paste_threshold_equals_thresholded_probabilities():
  rng = np.random.default_rng(1)
  probs = rng.uniform(size=(4, 28, 28)).astype(np.float32)
  boxes = np.array([[0, 0, 30, 20], [10, 5, 90, 60], [50, 40, 52, 41], [-5, -5, 10, 10]],
                   np.float32)
  info = (40, 60, 1.5, 60, 90)
  binary = masks.paste_masks(probs, boxes, info, threshold=0.5)
  assert binary.dtype == bool
  np.testing.assert_array_equal(binary, masks.paste_masks(probs, boxes, info) >= 0.5)
