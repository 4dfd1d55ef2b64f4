"""Regenerates tests/weights/goldens/detectron2_*.npz with detectron2's own code.

  python3 -m venv /tmp/d2venv && /tmp/d2venv/bin/pip install -r requirements-detectron2.txt
  git clone https://github.com/facebookresearch/detectron2 /tmp/d2src
  git -C /tmp/d2src checkout 02b5c4e295e990042a714712c21dc79b731e8833  # The goldens'.
  PYTHONPATH=/tmp/d2src /tmp/d2venv/bin/python tests/weights/detectron2_ref.py \
      '{"depth": 101, "size": 128, "images": [[288, 384], [384, 288]], "min_size": 100,
        "max_size": 128, "seed": 0, "sampling_ratio": 0, "dtype": "float64"}' \
      tests/weights/goldens/detectron2_r101_fpn_float64.npz
  PYTHONPATH=/tmp/d2src /tmp/d2venv/bin/python tests/weights/detectron2_ref.py \
      '{"depth": 50, "size": 320, "images": [[720, 960], [960, 720]], "min_size": 250,
        "max_size": 320, "seed": 0, "sampling_ratio": 0}' \
      tests/weights/goldens/detectron2_r50_fpn.npz
  PYTHONPATH=/tmp/d2src /tmp/d2venv/bin/python tests/weights/detectron2_ref.py \
      '{"kind": "msra", "depth": 50, "hw": [32, 48], "seed": 0}' \
      tests/weights/goldens/detectron2_msra_r50.npz

A source tree without .git (`git archive 02b5c4e... | tar -x -C /tmp/d2src`) records its
commit from DETECTRON2_COMMIT=02b5c4e295e990042a714712c21dc79b731e8833. Each run takes about
a minute on 2 CPU cores.

detectron2 is used from its source tree, not built: its ROIAlign and NMS wrap
torchvision's, so no C++ extension is needed. The model is
COCO-InstanceSegmentation/mask_rcnn_R_{depth}_FPN_3x.yaml on CPU with seeded random weights
(detectron2_states.py). Every FrozenBatchNorm2d's statistics are set to those of its input
on the test images (a forward pre-hook), so that activations stay O(1). The state dict is
written as a model-zoo pickle ({"model": {name: ndarray}, "__author__": ...}) and loaded
back through detectron2's DetectionCheckpointer into a fresh model, which computes the
reference: two images (H x W in spec["images"], uint8 RGB, fed as BGR) resized by its
ResizeShortestEdge(min_size, max_size) (DefaultPredictor's test-time resize) and padded
with 0 after normalisation to a size x size square (the FPN backbone's square_pad); its
detector_postprocess maps the detections back to H x W. The resize samples NEAREST, not
BILINEAR: the specs' sizes scale by exactly 1/3, where NEAREST and an unantialiased
bilinear both pick pixels (3i + 1), so the models' inputs are equal on both sides; PIL's
antialiased bilinear would differ from TF's.

`"dtype": "float64"`: the BN statistics are calibrated in float32 (the golden's, exact in
either precision), then the model runs `model.double()` on float64 images, with the config's
pixel mean and std (103.53 is no float32) and box decoding and NMS at float64
(`float64_boxes`); boxes stay float32 (detectron2's Boxes). The masks are stored float32.

The golden holds the provenance, the state dict's keys, shapes and per-key sums of |x|,
the calibrated BN statistics `stats/KEY`, and per image I: `proposals/I` [P, 4],
`proposal_logits/I`, `boxes/I`, `scores/I`, `classes/I` (detectron2's 0-79),
`masks/I` [N, 28, 28] probabilities (all in the resized image's pixels), `resized/I`
(its height, width) and, from detector_postprocess, `original_boxes/I` [N, 4] and
`original_masks/I`: the pasted H x W masks as a JSON list of COCO RLEs.

`"kind": "msra"`: an ImageNet R-{depth}.pkl in Caffe2's blob names (`res2_0_branch2a_w`,
folded BN `_bn_s`/`_bn_b`; detectron2_states.caffe2_resnet_shapes), seeded, loaded by
DetectionCheckpointer (its Caffe2 renaming) into detectron2's ResNet backbone (res2-res5
out); the golden holds the provenance, the input `x` [1, H, W, 3] (NHWC) and `res2`..`res5`
(NHWC).
"""

import json
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detectron2_states  # pylint: disable=g-import-not-at-top,wrong-import-position

import detectron2  # pylint: disable=g-import-not-at-top,wrong-import-position
from detectron2.checkpoint import DetectionCheckpointer  # pylint: disable=g-import-not-at-top,wrong-import-position
from detectron2.config import get_cfg  # pylint: disable=g-import-not-at-top,wrong-import-position
from detectron2.layers import FrozenBatchNorm2d  # pylint: disable=g-import-not-at-top,wrong-import-position
from detectron2.modeling import build_model  # pylint: disable=g-import-not-at-top,wrong-import-position


_SRC = os.path.dirname(os.path.dirname(detectron2.__file__))


def _commit() -> str:
  proc = subprocess.run(["git", "-C", _SRC, "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=False)
  return proc.stdout.strip() or os.environ.get("DETECTRON2_COMMIT", "unknown")


def build(spec):
  config_file = f"COCO-InstanceSegmentation/mask_rcnn_R_{spec['depth']}_FPN_3x.yaml"
  cfg = get_cfg()
  # The source tree's configs/ (an installed detectron2 has them under model_zoo/).
  cfg.merge_from_file(os.path.join(_SRC, "configs", config_file))
  cfg.MODEL.DEVICE = "cpu"
  cfg.MODEL.WEIGHTS = ""
  cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = spec["sampling_ratio"]
  cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = spec["sampling_ratio"]
  model = build_model(cfg).eval()
  model.backbone._square_pad = spec["size"]  # pylint: disable=protected-access
  if spec.get("dtype") == "float64":
    model.double()
    for name in ("pixel_mean", "pixel_std"):  # The config's, not their float32 roundings.
      getattr(model, name).copy_(torch.tensor(getattr(cfg.MODEL, name.upper()),
                                              dtype=torch.float64).view(-1, 1, 1))
  return model, config_file


def inputs(spec):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from detectron2.data import transforms  # pylint: disable=g-import-not-at-top
  resize = transforms.ResizeShortestEdge(spec["min_size"], spec["max_size"],
                                         interp=Image.NEAREST)
  images = [detectron2_states.image(h, w, spec["seed"] + i)
            for i, (h, w) in enumerate(spec["images"])]
  resized = [resize.get_transform(im).apply_image(im) for im in images]
  # detectron2 reads BGR (INPUT.FORMAT); the tests feed ours RGB with input_format BGR.
  return [{"image": torch.from_numpy(np.ascontiguousarray(r[..., ::-1].transpose(2, 0, 1)))
           .float(), "height": im.shape[0], "width": im.shape[1]}
          for im, r in zip(images, resized)]


def calibrate(model, batch):
  """Each FrozenBatchNorm2d's mean / var := those of its input (forward pre-hooks)."""
  def hook(module, args):
    x = args[0]
    module.running_mean.copy_(x.mean((0, 2, 3)))
    module.running_var.copy_(x.var((0, 2, 3), unbiased=False) + 1e-2)
  handles = [m.register_forward_pre_hook(hook) for m in model.modules()
             if isinstance(m, FrozenBatchNorm2d)]
  with torch.no_grad():
    model.backbone(model.preprocess_image(batch).tensor)
  for h in handles:
    h.remove()


def float64_boxes():
  """detectron2's box decoding and NMS at the deltas' and scores' float64.

  Box2BoxTransform.apply_deltas casts deltas to float32, whose rounding at the far corner
  of a clamped, image-wide RPN box (|x| ~ 4e4) is ~4e-3 px; its own code is run without
  that cast. Boxes still store float32. torchvision's nms wants the scores' dtype.
  """
  import inspect  # pylint: disable=g-import-not-at-top
  import textwrap  # pylint: disable=g-import-not-at-top
  from detectron2.modeling import box_regression  # pylint: disable=g-import-not-at-top
  cast = "deltas = deltas.float()"
  source = textwrap.dedent(inspect.getsource(box_regression.Box2BoxTransform.apply_deltas))
  assert source.count(cast) == 1, "detectron2's apply_deltas changed"
  scope = dict(vars(box_regression))
  exec(source.replace(cast, "pass"), scope)  # pylint: disable=exec-used
  box_regression.Box2BoxTransform.apply_deltas = scope["apply_deltas"]
  nms = torchvision.ops.boxes.nms
  torchvision.ops.boxes.nms = lambda boxes, scores, t: nms(boxes.to(scores.dtype), scores, t)


def run(model, batch):
  from detectron2.modeling import postprocessing  # pylint: disable=g-import-not-at-top
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    results, _ = model.roi_heads(images, features, proposals, None)
  out = {}
  for i, (p, r, x) in enumerate(zip(proposals, results, batch)):
    out[f"proposals/{i}"] = p.proposal_boxes.tensor.numpy()
    out[f"proposal_logits/{i}"] = p.objectness_logits.numpy()
    out[f"boxes/{i}"] = r.pred_boxes.tensor.numpy().copy()  # Postprocessing scales in place.
    out[f"scores/{i}"] = r.scores.numpy()
    out[f"classes/{i}"] = r.pred_classes.numpy()
    out[f"masks/{i}"] = r.pred_masks[:, 0].float().numpy()  # Compared pasted, at 0.5.
    out[f"resized/{i}"] = np.array(r.image_size)
    original = postprocessing.detector_postprocess(r, x["height"], x["width"])
    out[f"original_boxes/{i}"] = original.pred_boxes.tensor.numpy()
    pasted = np.asfortranarray(original.pred_masks.numpy().transpose(1, 2, 0).astype(np.uint8))
    out[f"original_masks/{i}"] = np.array(json.dumps(
        [rle["counts"].decode() for rle in mask_utils.encode(pasted)]))
  return out, tuple(images.tensor.shape)


def msra(spec, out_path):
  from detectron2.layers import ShapeSpec  # pylint: disable=g-import-not-at-top
  from detectron2.modeling.backbone import build_resnet_backbone  # pylint: disable=g-import-not-at-top
  cfg = get_cfg()
  cfg.MODEL.RESNETS.DEPTH = spec["depth"]
  cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
  backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
  blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[spec["depth"]]
  state = detectron2_states.random_state(detectron2_states.caffe2_resnet_shapes(blocks),
                                         spec["seed"])
  with tempfile.TemporaryDirectory() as tmp:
    pkl = os.path.join(tmp, f"R-{spec['depth']}.pkl")
    with open(pkl, "wb") as f:
      pickle.dump(state, f)  # As R-50.pkl: a plain dict of Caffe2 blobs.
    DetectionCheckpointer(backbone).load(pkl)
  loaded = backbone.state_dict()
  assert np.array_equal(loaded["res4.0.conv1.weight"].numpy(), state["res4_0_branch2a_w"])
  assert np.array_equal(loaded["stem.conv1.norm.weight"].numpy(), state["res_conv1_bn_s"])
  h, w = spec["hw"]
  x = np.random.default_rng(spec["seed"]).normal(size=(1, h, w, 3)).astype(np.float32)
  with torch.no_grad():
    out = backbone(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  result = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}
  result["x"] = x
  result["provenance"] = np.array(json.dumps({
      "script": "tests/weights/detectron2_ref.py", "spec": spec,
      "model": f"build_resnet_backbone, MODEL.RESNETS.DEPTH {spec['depth']}, defaults "
               "(STRIDE_IN_1X1, FrozenBN)", "detectron2_commit": _commit(),
      "detectron2": detectron2.__version__, "torch": torch.__version__,
      "numpy": np.__version__}))
  np.savez_compressed(out_path, **result)
  print({k: v.shape for k, v in result.items()})


def main(spec, out_path):
  torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
  if spec.get("kind") == "msra":
    msra(spec, out_path)
    return
  model, config_file = build({**spec, "dtype": "float32"})  # Calibrated in float32.
  shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  state = detectron2_states.random_state(shapes, spec["seed"])
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  batch = inputs(spec)
  calibrate(model, batch)
  state = {k: v.numpy().copy() for k, v in model.state_dict().items()}

  with tempfile.TemporaryDirectory() as tmp:
    pkl = os.path.join(tmp, "model_final.pkl")
    with open(pkl, "wb") as f:
      pickle.dump({"model": state, "__author__": "seeded random (detectron2_ref.py)",
                   "matching_heuristics": True}, f)
    fresh, _ = build(spec)
    DetectionCheckpointer(fresh).load(pkl)  # The model-zoo layout, read by detectron2.
  loaded = fresh.state_dict()
  assert all(np.array_equal(loaded[k].numpy(), v) for k, v in state.items())
  if spec.get("dtype") == "float64":  # Exact: the float32 weights and uint8 images.
    float64_boxes()
    batch = [{**x, "image": x["image"].double()} for x in batch]
  out, padded = run(fresh, batch)

  keys = sorted(state)
  out["keys"] = np.array(keys)
  out["shapes"] = np.array(json.dumps({k: list(state[k].shape) for k in keys}))
  out["fingerprint"] = np.array([np.abs(state[k].astype(np.float64)).sum() for k in keys])
  out.update({f"stats/{k}": v for k, v in state.items()
              if k.endswith((".running_mean", ".running_var"))})
  out["provenance"] = np.array(json.dumps({
      "script": "tests/weights/detectron2_ref.py", "spec": spec, "config": config_file,
      "overrides": {"MODEL.DEVICE": "cpu", "MODEL.WEIGHTS": "",
                    "POOLER_SAMPLING_RATIO (box, mask)": spec["sampling_ratio"],
                    "backbone square_pad": spec["size"],
                    "dtype": spec.get("dtype", "float32")},
      "padded_batch": padded, "detectron2_commit": _commit(),
      "detectron2": detectron2.__version__, "torch": torch.__version__,
      "torchvision": torchvision.__version__, "numpy": np.__version__}))
  np.savez_compressed(out_path, **out)
  print({k: v.shape for k, v in out.items() if not k.startswith("stats/")})


if __name__ == "__main__":
  main(json.loads(sys.argv[1]), sys.argv[2])
