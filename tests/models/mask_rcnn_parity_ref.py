"""torchvision's side of test_mask_rcnn_parity.py (run by the torch venv's python).

  .venv-torch/bin/python tests/models/mask_rcnn_parity_ref.py SPEC_JSON OUT.npz

A seeded ResNet-18 FPN Mask R-CNN on a seeded H x W image (spec `height`, `width`, both
at most S; default S x S), eval mode, its batch padded to S x S (`size_divisible` S: the
padding our model sees) with the normalised value 0. Writes `image`, the
state dict as `state/KEY`, FPN `features/I`, `proposals` and the
detections `boxes`, `scores`, `labels`, `masks` [N, 28, 28].
"""

import json
import sys

import numpy as np
import torch
from torchvision.models.detection import anchor_utils
from torchvision.models.detection import backbone_utils
from torchvision.models.detection import faster_rcnn
from torchvision.models.detection import mask_rcnn
from torchvision.ops import misc


def build(s, num_classes, mean, std, sizes, **kwargs):
  """The seeded model in eval mode; `kwargs` go to MaskRCNN (e.g. training settings)."""
  torch.manual_seed(0)
  backbone = backbone_utils.resnet_fpn_backbone(
      backbone_name="resnet18", weights=None, norm_layer=misc.FrozenBatchNorm2d,
      trainable_layers=3, returned_layers=[1, 2, 3, 4])
  channels = backbone.out_channels
  model = mask_rcnn.MaskRCNN(
      backbone, num_classes=None, min_size=s, max_size=s, image_mean=mean, image_std=std,
      rpn_anchor_generator=anchor_utils.AnchorGenerator(tuple((x,) for x in sizes),
                                                        ((0.5, 1.0, 2.0),) * 5),
      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
      box_head=faster_rcnn.TwoMLPHead(channels * 49, 64),
      box_predictor=faster_rcnn.FastRCNNPredictor(64, num_classes),
      box_detections_per_img=20,
      mask_head=mask_rcnn.MaskRCNNHeads(channels, (32, 32), 1),
      mask_predictor=mask_rcnn.MaskRCNNPredictor(32, 32, num_classes), **kwargs)
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, buf in model.named_buffers():
      if name.endswith("running_mean"):
        buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
      elif name.endswith("running_var"):
        buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
      elif name.endswith("bn1.weight") or name.endswith("bn2.weight"):
        buf.copy_(0.5 + 0.5 * torch.rand(buf.shape, generator=gen))
    # Spread the near-constant initial scores so that rankings are not float ties.
    for head in (model.rpn.head.cls_logits, model.roi_heads.box_predictor.bbox_pred,
                 model.rpn.head.bbox_pred):
      head.weight.normal_(0.0, 0.05, generator=gen)
    model.roi_heads.box_predictor.cls_score.weight.normal_(0.0, 1.0, generator=gen)
    for p in model.roi_heads.mask_predictor.parameters():
      p.normal_(0.0, 0.05, generator=gen)
  return model.eval()


def main(spec, out_path):
  s = spec["size"]
  h, w = spec.get("height", s), spec.get("width", s)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  image[20:70, 30:90] = (250, 30, 30)  # Some structure for the proposals to find.
  model = build(s, spec["num_classes"], spec["mean"], spec["std"], spec["sizes"])
  model.transform.size_divisible = s
  with torch.no_grad():
    images, _ = model.transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    features = model.backbone(images.tensors)
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
  out = {"image": image, "proposals": proposals[0].numpy()}
  out.update({f"state/{k}": v.numpy() for k, v in model.state_dict().items()})
  out.update({f"features/{i}": f.permute(0, 2, 3, 1).numpy()
              for i, f in enumerate(features.values())})
  out.update({k: v.numpy() for k, v in detections[0].items()})
  out["masks"] = out["masks"][:, 0]
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]), sys.argv[2])
