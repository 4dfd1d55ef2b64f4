import jax
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import pytest

from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import masks
from maskrcnn_jax.evaluation import stuff_metrics


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


def test_paste_clips_the_box_to_the_image_first():
  # As detectron2: the mask is stretched over the box's visible part, [0, 0, 4, 2] here,
  # giving the hand values above (unclipped, the mask's left half would lie off the image).
  mask = np.array([[[1.0, 0.0], [1.0, 0.0]]], np.float32)
  out = masks.paste_masks(mask, np.array([[-8, 0, 8, 4]], np.float32), (2, 4, 2.0, 4, 8))
  np.testing.assert_allclose(out[0, 0], [0.75, 0.75, 0.25, 0.0], atol=1e-6)


def test_nonempty_after_clipping():
  info = (40, 60, 2.0, 80, 120)
  boxes = np.array([[10, 20, 50, 60], [10, 20, 10, 60], [122, 0, 124, 8], [0, 4, 8, 3]],
                   np.float32)
  np.testing.assert_array_equal(masks.nonempty(masks.boxes_to_original(boxes, info)),
                                [True, False, False, False])


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


@pytest.mark.slow
def test_paste_matches_grid_sample(torch_reference):
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(5, 28, 28)).astype(np.float32)
  xy = rng.uniform(0, 40, size=(5, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(3, 30, size=(5, 2))], 1).astype(np.float32)
  h, w = 50, 70
  ours = masks.paste_masks(probs, boxes, (h, w, 1.0, h, w))
  # detectron2 `_do_paste_mask`: pixel centres normalised to the box, grid_sample; given
  # the boxes clipped to the image, as `detector_postprocess` gives them.
  clipped = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
  ref = torch_reference("tests/ops/torchvision_ops_ref.py",
                        inputs={"boxes": clipped, "probs": probs}, op="paste", height=h,
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


def _blobs(rng, n, m=28):
  """[n, m, m] smooth mask probabilities: Gaussian blobs of random centre and width."""
  g = np.linspace(-1, 1, m)
  c = rng.uniform(-0.5, 0.5, (n, 2, 1, 1))
  width = rng.uniform(0.1, 0.6, (n, 1, 1))
  return np.exp(-((g[:, None] - c[:, 0]) ** 2 + (g[None] - c[:, 1]) ** 2) / width
                ).astype(np.float32)


def _device_batch(rng):
  """Two images (37 × 53 at scale 1.7, 64 × 30 at 0.6) with 10 detections each."""
  infos = np.array([[37, 53, 1.7, 63, 90], [64, 30, 0.6, 38, 18]], np.float32)
  d = 10
  boxes, probs = [], []
  for h, w, scale, _, _ in infos:
    xy = rng.uniform(-5, (w - 1, h - 1), (d, 2))  # Overlapping the image: non-empty.
    boxes.append(np.concatenate([xy, xy + rng.uniform(6, 40, (d, 2))], 1) * scale)
    probs.append(np.concatenate([_blobs(rng, d - 2), rng.uniform(size=(1, 28, 28)),
                                 np.ones((1, 28, 28))]).astype(np.float32))
  dets = dict(boxes=np.stack(boxes).astype(np.float32), masks=np.stack(probs),
              scores=rng.uniform(size=(2, d)).astype(np.float32),
              classes=rng.integers(1, 6, (2, d)).astype(np.int32), valid=np.ones((2, d), bool))
  dets["scores"][0, 4] = dets["scores"][0, 5]  # A tie: the later detection wins.
  dets["valid"][1, 3] = False
  dets["boxes"][1, 6, 2] = np.nan  # Non-finite: not pasted.
  dets["boxes"][0, 7, 2] = dets["boxes"][0, 7, 0]  # Zero width: not pasted.
  dets["boxes"][1, 8] = (19, 0, 25, 10)  # In the padding (x > 30 · 0.6): empty once clipped.
  return dets, infos


def _near_boundary(mask: np.ndarray) -> np.ndarray:
  """Pixels whose 3 × 3 neighbourhood holds both values."""
  padded = np.pad(mask, 1, mode="edge")
  shifts = [padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
  return np.any([s != mask for s in shifts], axis=0)


def test_device_paste_equals_host_paste_within_a_boundary_pixel():
  dets, infos = _device_batch(np.random.default_rng(0))
  frame = masks.frame_size(infos[:, 0], infos[:, 1])
  assert frame == 64
  out = jax.device_get(jax.jit(lambda d, i: masks.paste_batch_device(
      d, i, frame=frame, capacity=4 * frame, threshold=0.5, fill=7))(dets, infos))
  assert out["label"].shape == (2, frame, frame)
  assert out["rle_positions"].shape == (2, 10, 4 * frame)
  for b, info in enumerate(infos):
    h, w = int(info[0]), int(info[1])
    valid = out["pasted_valid"][b]
    # Image 0: one empty box; image 1: one invalid, one non-finite, one empty.
    assert valid.sum() == (9, 7)[b]
    np.testing.assert_array_equal(valid, dets["valid"][b] & masks.nonempty(
        masks.boxes_to_original(dets["boxes"][b], info)))
    ref = masks.paste_masks(dets["masks"][b][valid], dets["boxes"][b][valid], info,
                            threshold=0.5)
    on = np.asarray(jax.jit(masks.paste_image_device, static_argnames=("frame", "threshold"))(
        dets["masks"][b], np.nan_to_num(dets["boxes"][b]), info, valid, frame=frame,
        threshold=0.5))[valid].transpose(0, 2, 1)
    assert not on[:, h:].any() and not on[:, :, w:].any()
    on = on[:, :h, :w]
    for mine, theirs in zip(on, ref):
      differ = mine != theirs
      assert not (differ & ~_near_boundary(theirs)).any()
      if theirs.sum() > 20:
        assert (mine & theirs).sum() / (mine | theirs).sum() >= 0.99
    label = stuff_metrics.paint_instances(ref, dets["classes"][b][valid],
                                          dets["scores"][b][valid], fill=7)
    assert (out["label"][b][:w, :h].T == label).mean() >= 0.999
    # The RLE of each mask from its transitions equals pycocotools' encoding.
    expected = coco_eval.encode_masks(on)
    count = out["rle_count"][b][valid]
    assert (count <= 4 * frame).all()
    runs = masks.transitions_to_rle(out["rle_positions"][b][valid], count, h, w)
    for counts, rle in zip(runs, expected):
      assert sum(counts) == h * w
      got = mask_utils.frPyObjects(dict(size=[h, w], counts=counts), h, w)
      assert got["counts"].decode() == rle["counts"]
    assert (out["rle_count"][b][~valid] == 0).all()


def test_device_transitions_report_overflow():
  on = np.zeros((1, 8, 8), bool)  # [d, x, y] in an 8 × 8 frame; the image is H 6 × W 5.
  on[0, 1, 0:6:2] = True  # Column x = 1: three runs, six changes (flat x·H + y = 6..11).
  on[0, 2, :6] = True  # Column x = 2 all on: on from 12, off again at 18 (x = 3, y = 0).
  transitions = jax.jit(masks.transitions_device, static_argnames="capacity")
  positions, count = jax.device_get(transitions(on, 6, 5, capacity=16))
  assert count.tolist() == [8]
  assert positions.tolist() == [[6, 7, 8, 9, 10, 11, 12, 18] + [-1] * 8]
  assert masks.transitions_to_rle(positions, count, 6, 5) == [[6, 1, 1, 1, 1, 1, 1, 6, 12]]
  positions, count = jax.device_get(transitions(on, 6, 5, capacity=4))
  assert count.tolist() == [8] and positions.tolist() == [[6, 7, 8, 9]]  # The first C.


def test_crop_rle_equals_the_full_mask_encoding():
  rng = np.random.default_rng(2)
  h, w = 30, 20
  probs = rng.uniform(size=(7, 28, 28)).astype(np.float32)
  probs[3:] = 1.0  # Full boxes: runs across the bottom and top rows of adjacent columns,
  boxes = np.array([[2, 3, 15, 25], [-4, -4, 30, 40], [5, 5, 9, 7], [0, 0, 20, 30],
                    [4, 0, 12, 30], [12, 18, 20, 30],  # on to the last pixel,
                    [30, 0, 40, 30]], np.float32)  # empty once clipped.
  info = (h, w, 1.0, h, w)
  crops = masks.paste_crops(probs, boxes, info, threshold=0.5)
  assert not crops[-1][2].any()
  full = masks.paste_masks(probs, boxes, info, threshold=0.5)
  for crop, mask, rle in zip(crops, full, coco_eval.encode_masks(full)):
    got = mask_utils.frPyObjects(dict(size=[h, w], counts=masks.crop_rle(*crop, h, w)), h, w)
    assert got["counts"].decode() == rle["counts"]
    np.testing.assert_array_equal(stuff_metrics.paint_crops([crop], [1], [1.0], (h, w)), mask)
