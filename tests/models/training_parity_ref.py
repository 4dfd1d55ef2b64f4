"""torchvision's side of test_training_parity.py (run by the torch venv's python).

  .venv-torch/bin/python tests/models/training_parity_ref.py SPEC_JSON OUT.npz

mask_rcnn_parity_ref.build's seeded ResNet-18 FPN Mask R-CNN in training mode with every
sampling candidate kept: the RPN samples `rpn_batch` (every anchor) and the RoI heads
`rois_per_image` (at least the proposals plus GT) per image, both with positive fraction
1, so torchvision's BalancedPositiveNegativeSampler keeps all positives and negatives. The
batch: two seeded images, S x S and a landscape `height` x S, padded to S x S, each with a
few GT boxes, labels and full-image masks (an ellipse in each box). The RoI heads get the
RPN's proposals (`rpn_post_nms` at most) followed by each GT box shifted by a few pixels,
so that proposals other than the GT are positive too.

Writes the batch (`image/I` [h, w, 3] uint8, `boxes/I` [M_i, 4], `labels/I` [M_i],
`masks/I` [M_i, h, w] uint8), `state/KEY`, the proposals given to the RoI heads
(`proposals/I` [P_i, 4]), the five losses (`loss/NAME`, torchvision's names), the
anchors' label counts (`rpn_fg`, `rpn_bg` [2]), the RoIs the mask loss sees and
project_masks_on_boxes' targets for them (`mask_rois` [Q, 4], `mask_image` [Q] image
index, `mask_targets` [Q, 28, 28]) and the gradient of the losses' sum for every
parameter that gets one (`grad/KEY`).
"""

import json
import sys

import numpy as np
import torch
from torchvision.models.detection import roi_heads

import mask_rcnn_parity_ref

# (x1, y1, x2, y2) integer pixels and labels in 1..3 of the two images.
GT = ([[10, 12, 70, 60], [60, 40, 120, 122], [18, 76, 52, 112]], [[30, 10, 100, 70],
                                                                   [4, 46, 40, 90]])
LABELS = ([1, 2, 3], [3, 1])


def make_image(rng, h, w, boxes):
  """A noisy image with a coloured ellipse in each box, and the ellipses' masks."""
  image = rng.integers(0, 120, (h, w, 3), dtype=np.uint8)
  yy, xx = np.mgrid[:h, :w] + 0.5
  masks = []
  for x1, y1, x2, y2 in boxes:
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    mask = ((xx - cx) / rx)**2 + ((yy - cy) / ry)**2 <= 1
    image[mask] = rng.integers(120, 256, 3)
    masks.append(mask)
  return image, np.stack(masks).astype(np.uint8)


def main(spec, out_path):
  s = spec["size"]
  rng = np.random.default_rng(0)
  model = mask_rcnn_parity_ref.build(
      s, spec["num_classes"], spec["mean"], spec["std"], spec["sizes"],
      rpn_pre_nms_top_n_train=spec["rpn_pre_nms"], rpn_post_nms_top_n_train=spec["rpn_post_nms"],
      rpn_batch_size_per_image=spec["rpn_batch"], rpn_positive_fraction=1.0,
      box_batch_size_per_image=spec["rois_per_image"], box_positive_fraction=1.0)
  model.train()
  model.transform.size_divisible = s
  out = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
  images, targets = [], []
  for i, (h, boxes, labels) in enumerate(zip((s, spec["height"]), GT, LABELS)):
    image, masks = make_image(rng, h, s, boxes)
    out.update({f"image/{i}": image, f"boxes/{i}": np.float32(boxes),
                f"labels/{i}": np.int64(labels), f"masks/{i}": masks})
    images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                    "labels": torch.tensor(labels), "masks": torch.from_numpy(masks)})

  captured, project = [], roi_heads.project_masks_on_boxes

  def project_masks_on_boxes(gt_masks, boxes, matched_idxs, m):
    targets = project(gt_masks, boxes, matched_idxs, m)
    captured.append((boxes.detach().clone(), targets.detach().clone()))
    return targets

  roi_heads.project_masks_on_boxes = project_masks_on_boxes  # Called per image, in order.
  images, targets = model.transform(images, targets)
  features = model.backbone(images.tensors)
  proposals, losses = model.rpn(images, features, targets)
  shift = torch.tensor([3.0, -2.0, 2.0, 3.0])
  proposals = [torch.cat([p, t["boxes"] + shift]) for p, t in zip(proposals, targets)]
  _, roi_losses = model.roi_heads(features, proposals, images.image_sizes, targets)
  losses.update(roi_losses)
  sum(losses.values()).backward()

  with torch.no_grad():
    anchors = model.rpn.anchor_generator(images, list(features.values()))
    labels, _ = model.rpn.assign_targets_to_anchors(anchors, targets)
  out["rpn_fg"] = np.array([int((l == 1).sum()) for l in labels])
  out["rpn_bg"] = np.array([int((l == 0).sum()) for l in labels])
  out.update({f"proposals/{i}": p.numpy() for i, p in enumerate(proposals)})
  out.update({f"loss/{k}": v.detach().numpy() for k, v in losses.items()})
  out["mask_rois"] = torch.cat([b for b, _ in captured]).numpy()
  out["mask_image"] = np.concatenate([np.full(len(b), i) for i, (b, _) in enumerate(captured)])
  out["mask_targets"] = torch.cat([t for _, t in captured]).numpy()
  out.update({f"grad/{k}": p.grad.numpy() for k, p in model.named_parameters()
              if p.grad is not None})
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]), sys.argv[2])
