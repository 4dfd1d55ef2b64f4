"""Training losses and gradients against torchvision's, on the same batch and weights.

parity_model's ResNet-18 FPN Mask R-CNN at 128 px, training mode, with the converted
random weights of training_parity_ref.py (torchvision, its own process), on its batch: a
square and a landscape image padded to 128 x 128 with 3 and 2 GT instances (the second
image has a padded GT slot). Sampling keeps every candidate on both sides: the RPN samples
all anchors, the RoI heads all proposals plus GT, positive fraction 1; the losses are
means, so the order of the samples does not matter.

Fed to both sides alike, so that only the losses' definitions and normalisation are
compared: the RoI heads get torchvision's proposals (its RPN's, then the GT boxes shifted
by a few pixels), so NMS ties cannot differ; and our mask targets are torchvision's
project_masks_on_boxes output for the same RoI (`roi_heads.mask_targets` is replaced by a
look-up: ours sample the box-cropped GT masks, torchvision's the full-image ones, by
design; tests/models/test_roi_heads.py checks ours). The RPN losses come from the model's
own features and anchors.

Compared: the five losses (within 1e-4 relative; measured 1e-6), the sampled counts, and
the gradient of their sum (training.train.total_loss) for every parameter torchvision
trains: ResNet stages 3-5, FPN, RPN head, box head, mask head (within 1e-3 of the tensor's
largest |gradient|; measured 4e-5), the stem and stage 2 frozen on both sides.
"""

from unittest import mock

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskrcnn_jax import models
from maskrcnn_jax.data import coco_reader
from maskrcnn_jax.models import roi_heads
from maskrcnn_jax.models import rpn
from maskrcnn_jax.training import train
import parity_model

pytestmark = pytest.mark.parity

REF = "tests/models/training_parity_ref.py"
S = parity_model.S
BATCH = 2  # Images (training_parity_ref.GT).
HEIGHT = 96  # Of the second image: landscape.
M = 3  # GT slots per image.
MASK_SIZE = 28  # Of our box-cropped GT masks.
RPN_PRE_NMS, RPN_POST_NMS = 300, 100
P = RPN_POST_NMS + M  # Proposal slots: the RPN's and the shifted GT boxes.
NUM_ANCHORS = 3 * sum((S // stride)**2 for stride in rpn.STRIDES)
LOSSES = {"rpn_objectness_loss": "loss_objectness", "rpn_box_loss": "loss_rpn_box_reg",
          "rcnn_class_loss": "loss_classifier", "rcnn_box_loss": "loss_box_reg",
          "mask_loss": "loss_mask"}


def _model():
  config = parity_model.model_config()
  config.rpn.samples_per_image = NUM_ANCHORS
  config.rpn.positive_fraction = 1.0
  config.rpn.pre_nms_topk_train = RPN_PRE_NMS
  config.rpn.post_nms_topk_train = RPN_POST_NMS
  config.roi_heads.rois_per_image = P + M
  config.roi_heads.positive_fraction = 1.0
  return models.build(config, num_classes=parity_model.NUM_CLASSES)


def _losses(m, x, image_hw, gt, proposals):
  """MaskRCNN's training forward from the normalised image, with the given proposals."""
  features = m.fpn(m.backbone(x))
  _, rpn_losses = m.rpn(features, image_hw, (gt["boxes"], gt["valid"]), train=True)
  return {**rpn_losses, **m.roi_heads(features[:4], proposals, image_hw, gt, train=True)}


def _fed_mask_targets(ref):
  """`roi_heads.mask_targets` that returns torchvision's target of the same RoI.

  Its RoIs [B * Rm, 4] are image-major; a RoI with no torchvision twin (padding) gets 0.
  """
  boxes, image, targets = (jnp.asarray(ref[k]) for k in ("mask_rois", "mask_image",
                                                         "mask_targets"))

  def mask_targets(gt_masks, gt_boxes, rois):
    del gt_masks, gt_boxes
    row_image = jnp.arange(rois.shape[0]) // (rois.shape[0] // BATCH)
    same = (rois[:, None] == boxes[None]).all(-1) & (row_image[:, None] == image[None])
    return jnp.where(same.any(1)[:, None, None], targets[jnp.argmax(same, 1)], 0.0)

  return mask_targets


@pytest.fixture(scope="module")
def reference(torch_reference):
  return torch_reference(REF, size=S, height=HEIGHT, num_classes=parity_model.NUM_CLASSES,
                         mean=parity_model.MEAN, std=parity_model.STD,
                         sizes=parity_model.SIZES, rpn_pre_nms=RPN_PRE_NMS,
                         rpn_post_nms=RPN_POST_NMS, rpn_batch=NUM_ANCHORS,
                         rois_per_image=P + M)


@pytest.fixture(scope="module")
def outputs(reference):
  """(our losses and statistics, our gradients as a flat {path: array})."""
  model = _model()
  x = np.zeros((BATCH, S, S, 3), np.float32)
  image_hw = np.zeros((BATCH, 2), np.float32)
  gt = {"boxes": np.zeros((BATCH, M, 4), np.float32),
        "classes": np.zeros((BATCH, M), np.int32),
        "masks": np.zeros((BATCH, M, MASK_SIZE, MASK_SIZE), np.uint8),
        "valid": np.zeros((BATCH, M), bool)}
  proposals = {"boxes": np.zeros((BATCH, P, 4), np.float32),
               "valid": np.zeros((BATCH, P), bool)}
  for i in range(BATCH):
    image, boxes = reference[f"image/{i}"], reference[f"boxes/{i}"]
    h, w = image.shape[:2]
    x[i, :h, :w] = (image - np.array(model.pixel_mean)) / np.array(model.pixel_std)
    image_hw[i] = h, w
    n = len(boxes)
    gt["boxes"][i, :n], gt["classes"][i, :n], gt["valid"][i, :n] = (
        boxes, reference[f"labels/{i}"], True)
    gt["masks"][i, :n] = [coco_reader.crop_mask(mask, box, MASK_SIZE)
                          for mask, box in zip(reference[f"masks/{i}"], boxes)]
    rois = reference[f"proposals/{i}"]
    proposals["boxes"][i, :len(rois)], proposals["valid"][i, :len(rois)] = rois, True
  variables = parity_model.convert(parity_model.group(reference, "state/"))

  def loss_fn(params):
    out = model.apply({**variables, "params": params}, x, image_hw, gt, proposals,
                      method=_losses, rngs={"sampling": jax.random.key(0)})
    return train.total_loss(out), out

  with mock.patch.object(roi_heads, "mask_targets", _fed_mask_targets(reference)):
    (_, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  return out, traverse_util.flatten_dict(grads, sep="/")


@pytest.mark.slow
def test_every_candidate_is_sampled(reference, outputs):
  out, _ = outputs
  np.testing.assert_allclose([out["num_rpn_fg"], out["num_rpn_bg"]],
                             [reference["rpn_fg"].mean(), reference["rpn_bg"].mean()])
  num_fg = len(reference["mask_rois"]) / BATCH
  num_gt = sum(len(reference[f"boxes/{i}"]) for i in range(BATCH)) / BATCH
  candidates = sum(len(reference[f"proposals/{i}"]) for i in range(BATCH)) / BATCH + num_gt
  assert num_fg > num_gt  # Positives besides the GT boxes (the shifted ones).
  np.testing.assert_allclose([out["num_fg_rois"], out["num_bg_rois"]],
                             [num_fg, candidates - num_fg])


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.slow
def test_losses(reference, outputs, name):
  out, _ = outputs
  np.testing.assert_allclose(out[name], reference[f"loss/{LOSSES[name]}"], rtol=1e-4)


def test_gradients(reference, outputs):
  """Each tensor within 1e-3 of its largest |gradient| (float32 sums over the batch)."""
  _, grads = outputs
  want = traverse_util.flatten_dict(
      parity_model.convert(parity_model.group(reference, "grad/"))["params"], sep="/")
  for path in ("rpn/head/", "roi_heads/box_head/", "roi_heads/mask_head/", "fpn/"):
    assert any(k.startswith(path) for k in want), path
  for path, g in want.items():
    np.testing.assert_allclose(grads[path], g, atol=1e-3 * np.abs(g).max(), err_msg=path)
  frozen = [k for k in grads if k not in want]
  assert frozen and all(k.startswith(("backbone/stem/", "backbone/res2/")) for k in frozen)
  assert not any(np.any(grads[k]) for k in frozen)
