"""torchvision's side of test_predict_parity.py (run by the torch venv's python).

  .venv-torch/bin/python tests/predict_parity_ref.py SPEC_JSON OUT.npz

torchvision's `maskrcnn_resnet50_fpn` (v1: 91 COCO classes, FrozenBatchNorm2d, its default
inference settings) with seeded random weights. Each FrozenBN's statistics are set to
those of its input on the first of the spec's `images` (as bench/run.py's
`prepare_torchvision`) and its affine part randomised, so that features stay O(1) and BN is
exercised; the box classifier gets spread logits so that scores do not tie, and the rows
of the unannotated ids logits far below (as trained weights have them). Then each
image (a file read with PIL, RGB) is run alone with `min_size` / `max_size` of the spec.
Writes the state dict as `state/KEY` and per image `I/boxes` [N, 4], `I/scores` [N],
`I/labels` [N] (COCO ids).
"""

import json
import sys

import numpy as np
from PIL import Image
import torch
from torchvision.models import resnet
from torchvision.models.detection import backbone_utils
from torchvision.models.detection import mask_rcnn
from torchvision.ops import misc
from torchvision.ops import poolers


UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)  # Of 1-90; COCO-Stuff's 91 is past it.


def build(spec):
  torch.manual_seed(spec["seed"])
  body = resnet.resnet50(weights=None, norm_layer=misc.FrozenBatchNorm2d)
  backbone = backbone_utils._resnet_fpn_extractor(body, 3)  # pylint: disable=protected-access
  model = mask_rcnn.MaskRCNN(backbone, num_classes=91, min_size=spec["min_size"],
                             max_size=spec["max_size"])
  if spec.get("size_divisible"):
    model.transform.size_divisible = spec["size_divisible"]
    # MultiScaleRoIAlign infers its scales on its first call from feature size / valid
    # image size, rounded to a power of 2: past a padding of sqrt(2) (a 16:9 image padded
    # to a square) it rounds to the wrong one. These are the scales it infers otherwise.
    for pool in (model.roi_heads.box_roi_pool, model.roi_heads.mask_roi_pool):
      pool.scales = [2.0**-k for k in range(2, 6)]
      pool.map_levels = poolers.initLevelMapper(2, 5, canonical_scale=pool.canonical_scale,
                                                canonical_level=pool.canonical_level)
  return model.eval()


def calibrate(model, images, seed):
  gen = torch.Generator().manual_seed(seed)

  def set_statistics(module, inputs):
    x = inputs[0]
    n = x.shape[1]
    module.running_mean.copy_(x.mean((0, 2, 3)))
    module.running_var.copy_(x.var((0, 2, 3)) + module.eps)
    module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
    module.bias.copy_(torch.randn(n, generator=gen) * 0.1)

  bns = [m for m in model.backbone.modules() if isinstance(m, misc.FrozenBatchNorm2d)]
  hooks = [m.register_forward_pre_hook(set_statistics) for m in bns]
  with torch.no_grad():
    model.backbone(model.transform([images[0]])[0].tensors)
    for hook in hooks:
      hook.remove()
    cls_score = model.roi_heads.box_predictor.cls_score
    cls_score.weight.normal_(0.0, spec_std(model), generator=gen)
    # The 10 ids COCO never annotates (and background's 0 is kept) are never a target in
    # trained weights, so their logits are far below the others; the class set `coco`
    # drops those rows, which leaves the softmax unchanged only then.
    unused = [i for i in range(1, 91) if i in UNUSED_IDS]
    cls_score.weight[unused] = 0.0
    cls_score.bias[unused] = -30.0


def spec_std(model):
  """A classifier weight scale that spreads the 91 logits over a few units."""
  return 2.0 / model.roi_heads.box_predictor.cls_score.in_features ** 0.5


def main(spec, out_path):
  images = [torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
            .float() / 255 for p in spec["images"]]
  model = build(spec)
  calibrate(model, images, spec["seed"])
  out = {f"state/{k}": v.numpy() for k, v in model.state_dict().items()}
  with torch.no_grad():
    for i, image in enumerate(images):
      det = model([image])[0]
      for key in ("boxes", "scores", "labels"):
        out[f"{i}/{key}"] = det[key].numpy()
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(json.loads(sys.argv[1]), sys.argv[2])
