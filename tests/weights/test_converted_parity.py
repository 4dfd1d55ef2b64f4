"""Converted torchvision models compute what torchvision computes.

torchvision runs in its own process (converted_parity_ref.py through the `torch_reference`
fixture of tests/conftest.py): seeded random weights, BatchNorm statistics calibrated on the
input. Its outputs and state dict come back as arrays; here they are converted and run.
"""

import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from maskrcnn_jax.models import resnet
from maskrcnn_jax.weights import convert_torchvision as conv
import parity_inputs
import torch_parity

REF = "tests/weights/converted_parity_ref.py"


def state_of(ref):
  return {k[len("state/"):]: v for k, v in ref.items() if k.startswith("state/")}


def max_rel_err(ours, theirs):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.slow
def test_imagenet_resnet_c2_to_c5(depth, torch_reference):
  ref = torch_reference(REF, kind="resnet", depth=depth)
  variables = conv.convert(state_of(ref), depth=depth)
  variables = {c: v["backbone"] for c, v in variables.items()}
  outputs = jax.jit(resnet.ResNet(depth=depth).apply)(variables, ref["x"])
  for level, ours in zip(range(2, 6), outputs):
    err = max_rel_err(ours, ref[f"c{level}"])
    print(f"resnet{depth} C{level} max abs err / max abs: {err:.2e}")
    assert err < 1e-4, level


# Both sides' shortest-edge resize, both limits at work, on a 4:3 and a 3:4 image: the shorter
# side to 150 would make the longer 200, so the longer is capped at 192, a scale of exactly
# 1/3, where both bilinear resizes pick pixels (3i + 1): the same input on both sides.
MIN_SIZE, MAX_SIZE, CANVAS = 150, 192, 192
IMAGES = ((432, 576), (576, 432))
RESIZED = ((144, 192), (192, 144))
# Images without an NMS knife-edge: from seed 0, two boxes of one class overlap with IoU
# 0.5022 on torchvision's side and under 0.5 on ours (boxes agree to 1e-2 px), so one of the
# 100 detections differs.
SEED = 1


@pytest.fixture(scope="module")
def mask_rcnn_outputs(torch_reference):
  """torchvision's maskrcnn_resnet50_fpn and the converted model on a batch of two images,
  each side resizing them."""
  from configs import torchvision_r50_fpn  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top

  ref = torch_reference(REF, kind="mask_rcnn", images=IMAGES, seed=SEED, min_size=MIN_SIZE,
                        max_size=MAX_SIZE, canvas=CANVAS)
  assert [tuple(s) for s in ref["image_sizes"]] == list(RESIZED)
  theirs = {"features": [ref[f"features/{i}"] for i in range(5)], "input": ref["input"]}
  config = torchvision_r50_fpn.get_config()
  config.data.min_size, config.data.max_size = (MIN_SIZE,), MAX_SIZE
  batch = parity_inputs.evaluation_batch([ref[f"image/{i}"] for i in range(len(IMAGES))],
                                         config.data)
  np.testing.assert_array_equal(batch["image_info"][:, 3:], RESIZED)
  assert batch["image"].shape[1:3] == (CANVAS, CANVAS)
  model = models.build(config.model, num_classes=91)
  variables = conv.convert(state_of(ref), depth=50)
  ours = jax.jit(functools.partial(model.apply, train=False))(variables, batch)
  ours = jax.tree.map(np.asarray, ours)
  # The model's input: normalised, 0 past each image (as torchvision pads).
  inside = np.stack([(np.arange(CANVAS)[:, None] < h) & (np.arange(CANVAS)[None] < w)
                     for h, w in RESIZED])[..., None]
  ours["input"] = np.where(inside, (batch["image"] - np.float32(config.model.pixel_mean))
                           / np.float32(config.model.pixel_std), 0).astype(np.float32)
  ours["features"] = jax.jit(lambda v, x: model.apply(
      v, x, method=lambda m, x: m.fpn(m.backbone(x))))(variables, ours["input"])
  ours["image_info"] = batch["image_info"]
  return ours, theirs, ref


def nearest(a, b):
  """For each box of a [N, 4], the index in b [M, 4] of the closest and its max |coord diff|."""
  d = np.abs(a[:, None] - b[None]).max(-1)
  return d.argmin(1), d.min(1)


@pytest.mark.slow
def test_mask_rcnn_fpn_features(mask_rcnn_outputs):
  ours, theirs, _ = mask_rcnn_outputs
  np.testing.assert_allclose(ours["input"], theirs["input"], atol=1e-5)
  for level, (a, b) in enumerate(zip(ours["features"], theirs["features"]), 2):
    err = max_rel_err(a, b)
    print(f"P{level} max abs err {np.abs(np.asarray(a) - b).max():.2e}, / max abs {err:.2e}")
    assert a.shape == b.shape and err < 1e-4, level


def test_mask_rcnn_proposals(mask_rcnn_outputs):
  ours, _, ref = mask_rcnn_outputs
  for i in range(len(IMAGES)):
    boxes = ours["proposals"][i][ours["proposal_valid"][i]]
    assert len(boxes) == len(ref[f"proposals/{i}"])
    _, err = nearest(ref[f"proposals/{i}"], boxes)
    _, err_back = nearest(boxes, ref[f"proposals/{i}"])
    print(f"image {i}: {len(boxes)} proposals, max coordinate error "
          f"{max(err.max(), err_back.max()):.2e} px")
    assert err.max() < 1e-2 and err_back.max() < 1e-2


def test_mask_rcnn_detections_and_masks(mask_rcnn_outputs):
  """In the resized frame, and in the original frame after each side's postprocessing."""
  from maskrcnn_jax.evaluation import masks as mask_lib  # pylint: disable=g-import-not-at-top

  ours, _, ref = mask_rcnn_outputs
  for i, (h, w) in enumerate(RESIZED):
    valid = ours["valid"][i]
    assert valid.sum() == len(ref[f"scores/{i}"]) > 10
    boxes, scores = ours["boxes"][i][valid], ours["scores"][i][valid]
    classes, masks = ours["classes"][i][valid], ours["masks"][i][valid]
    # Match by box within the same class: order may differ where scores tie.
    same_class = ref[f"labels/{i}"][:, None] == classes[None]
    d = np.where(same_class, np.abs(ref[f"boxes/{i}"][:, None] - boxes[None]).max(-1), np.inf)
    match, box_err = d.argmin(1), d.min(1)
    assert len(set(match)) == len(match)
    score_err = np.abs(scores[match] - ref[f"scores/{i}"])
    mask_err = np.abs(masks[match] - ref[f"masks/{i}"])
    original = mask_lib.boxes_to_original(boxes[match], ours["image_info"][i])
    original_err = np.abs(original - ref[f"original_boxes/{i}"]).max()
    info = np.array([h, w, 1.0, h, w], np.float32)
    pasted = mask_lib.paste_masks(masks[match], boxes[match], info) > 0.5
    pasted_theirs = mask_lib.paste_masks(ref[f"masks/{i}"], ref[f"boxes/{i}"], info) > 0.5
    union = (pasted | pasted_theirs).sum((1, 2))
    iou = np.where(union > 0, (pasted & pasted_theirs).sum((1, 2)) / np.maximum(union, 1), 1.0)
    print(f"image {i} ({h}x{w}): {len(match)} detections, box error {box_err.max():.2e} px, "
          f"original frame {original_err:.2e} px, score error {score_err.max():.2e}, 28x28 "
          f"mask probability error {mask_err.max():.2e}, pasted mask IoU min {iou.min():.4f} "
          f"mean {iou.mean():.4f}")
    assert box_err.max() < 1e-2 and original_err < 3e-2  # 3 original pixels per resized one.
    assert score_err.max() < 1e-3
    assert mask_err.max() < 1e-2
    # Random weights make checkerboard masks, so pixels near 0.5 abound: a few may flip.
    assert iou.mean() > 0.99 and iou.min() > 0.97


def convert_pth(pth, output, *args):
  """The converter's CLI on a .pth, in a process of its own that could import torch."""
  python, _ = torch_parity.torch_python()
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [torch_parity.ROOT, torch_parity.site_packages(python)])}  # Ours first.
  return subprocess.run([sys.executable, "-m", "maskrcnn_jax.weights.convert_torchvision",
                         f"--input={pth}", f"--output={output}", *args],
                        env=env, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_pth_file_with_frozen_batchnorm(tmp_path, torch_reference):
  """A .pth torch.save wrote, read without torch."""
  from maskrcnn_jax.weights import checkpoint  # pylint: disable=g-import-not-at-top

  pth = tmp_path / "r18.pth"
  ref = torch_reference(REF, kind="pth", pth=str(pth))  # FrozenBatchNorm2d: no num_batches_tracked.
  proc = convert_pth(pth, tmp_path / "r18", "--depth=18")
  assert proc.returncode == 0, proc.stderr[-2000:]
  loaded = checkpoint.load_variables(str(tmp_path / "r18"))
  expected = conv.convert(state_of(ref))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), loaded, expected)
  variables = {c: v["backbone"] for c, v in loaded.items()}
  ours = jax.jit(resnet.ResNet(depth=18).apply)(variables, ref["x"])[-1]
  assert max_rel_err(ours, ref["c5"]) < 1e-4


def test_pth_that_runs_code_is_refused(tmp_path, torch_reference):
  pth, marker = tmp_path / "evil.pth", tmp_path / "ran"
  torch_reference(REF, kind="evil_pth", pth=str(pth), marker=str(marker))
  proc = convert_pth(pth, tmp_path / "out")
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip() == (f"{pth}: refusing to unpickle the global posix.system: only "
                                 "numeric arrays, dicts, lists and scalars are read")
  assert not marker.exists()
