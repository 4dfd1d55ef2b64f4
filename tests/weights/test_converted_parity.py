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


SIZE = 320  # Square, a multiple of 64; torchvision's transform is told not to resize it.


@pytest.fixture(scope="module")
def mask_rcnn_outputs(torch_reference):
  """torchvision's maskrcnn_resnet50_fpn and the converted model on one image."""
  from configs import torchvision_r50_fpn  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax import models  # pylint: disable=g-import-not-at-top

  ref = torch_reference(REF, kind="mask_rcnn", size=SIZE)
  image = ref["image"]
  theirs = {k: ref[k] for k in ("boxes", "scores", "labels", "masks", "proposals", "input")}
  theirs["features"] = [ref[f"features/{i}"] for i in range(5)]

  config = torchvision_r50_fpn.get_config().model
  model = models.build(config, num_classes=91)
  variables = conv.convert(state_of(ref), depth=50)
  batch = {"image": image[None],
           "image_info": np.array([[SIZE, SIZE, 1.0, SIZE, SIZE]], np.float32)}
  ours = jax.jit(functools.partial(model.apply, train=False))(variables, batch)
  ours = {k: np.asarray(v[0]) for k, v in ours.items()}
  ours["input"] = ((image[None] - np.float32(config.pixel_mean))
                   / np.float32(config.pixel_std))
  ours["features"] = jax.jit(lambda v, x: model.apply(
      v, x, method=lambda m, x: m.fpn(m.backbone(x))))(variables, ours["input"])
  return ours, theirs


def nearest(a, b):
  """For each box of a [N, 4], the index in b [M, 4] of the closest and its max |coord diff|."""
  d = np.abs(a[:, None] - b[None]).max(-1)
  return d.argmin(1), d.min(1)


@pytest.mark.slow
def test_mask_rcnn_fpn_features(mask_rcnn_outputs):
  ours, theirs = mask_rcnn_outputs
  np.testing.assert_allclose(ours["input"], theirs["input"], atol=1e-5)
  for level, (a, b) in enumerate(zip(ours["features"], theirs["features"]), 2):
    err = max_rel_err(a, b)
    print(f"P{level} max abs err {np.abs(np.asarray(a) - b).max():.2e}, / max abs {err:.2e}")
    assert a.shape == b.shape and err < 1e-4, level


def test_mask_rcnn_proposals(mask_rcnn_outputs):
  ours, theirs = mask_rcnn_outputs
  boxes = ours["proposals"][ours["proposal_valid"]]
  assert len(boxes) == len(theirs["proposals"])
  _, err = nearest(theirs["proposals"], boxes)
  _, err_back = nearest(boxes, theirs["proposals"])
  print(f"proposals: {len(boxes)}, max coordinate error {max(err.max(), err_back.max()):.2e} px")
  assert err.max() < 1e-2 and err_back.max() < 1e-2


def test_mask_rcnn_detections_and_masks(mask_rcnn_outputs):
  from maskrcnn_jax.evaluation import masks as mask_lib  # pylint: disable=g-import-not-at-top

  ours, theirs = mask_rcnn_outputs
  valid = ours["valid"]
  assert valid.sum() == len(theirs["scores"]) > 10
  boxes, scores = ours["boxes"][valid], ours["scores"][valid]
  classes, masks = ours["classes"][valid], ours["masks"][valid]
  # Match by box within the same class: order may differ where scores tie.
  same_class = theirs["labels"][:, None] == classes[None]
  d = np.where(same_class, np.abs(theirs["boxes"][:, None] - boxes[None]).max(-1), np.inf)
  match, box_err = d.argmin(1), d.min(1)
  assert len(set(match)) == len(match)
  score_err = np.abs(scores[match] - theirs["scores"])
  mask_err = np.abs(masks[match] - theirs["masks"])
  info = np.array([SIZE, SIZE, 1.0, SIZE, SIZE], np.float32)
  pasted = mask_lib.paste_masks(masks[match], boxes[match], info) > 0.5
  pasted_theirs = mask_lib.paste_masks(theirs["masks"], theirs["boxes"], info) > 0.5
  union = (pasted | pasted_theirs).sum((1, 2))
  iou = np.where(union > 0, (pasted & pasted_theirs).sum((1, 2)) / np.maximum(union, 1), 1.0)
  print(f"detections: {len(match)}, box error {box_err.max():.2e} px, score error "
        f"{score_err.max():.2e}, 28x28 mask probability error {mask_err.max():.2e}, "
        f"pasted mask IoU min {iou.min():.4f} mean {iou.mean():.4f}")
  assert box_err.max() < 1e-2
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
