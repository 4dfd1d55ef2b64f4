"""COCO-Stuff's official results format: per-image label-map PNGs and the RLE results JSON.

The official evaluation (cocostuffapi `COCOStuffeval`) scores a JSON list of
`{image_id, category_id, segmentation}`: per image one compressed RLE per stuff label, the
masks of one image disjoint. cocostuffapi's `pngToCocoResult` makes it from an indexed PNG
whose pixel values are COCO ids. This module writes both, converts PNG folders the same
way, and scores results with `stuff_metrics` (defined as `COCOStuffeval`).

Label maps are [H, W] uint8 COCO ids: 92..182 stuff, 183 `other`, 1..91 the things of a
`things_and_stuff` model, 0 no label. Only labels >= 92 become results, as in
`pngToCocoResult`; `COCOStuffeval` counts a pixel without a result label (0 or a thing) as
`other` when `other` is a class, and as a miss otherwise.

CLI: `python -m maskrcnn_jax.evaluation.export --png_dir D --output results.json
[--gt_json stuff_val2017.json [--no_other]]` converts a folder of label-map PNGs and, with
a ground truth, prints the official metrics.
"""

import io
import json
import re
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import coco_eval
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.evaluation import stuff_metrics

# The order of `COCOStuffeval.stats`.
STATS = ("mIoU", "fwIoU", "mAcc", "pAcc")
_PALETTE = pictures.class_colors(255).reshape(-1).tolist()  # Colour of COCO id i at i.


def to_coco_label_map(label_map: np.ndarray, class_set) -> np.ndarray:
  """[H, W] training ids (0 = no label) → [H, W] uint8 COCO ids (0 = no label)."""
  label_map = np.asarray(label_map)
  if label_map.size and (label_map.min() < 0 or label_map.max() > class_set.num_classes):
    raise ValueError(f"label map values must be training ids in [0, {class_set.num_classes}]"
                     f", got [{label_map.min()}, {label_map.max()}]")
  return class_set.coco_id_lut().astype(np.uint8)[label_map]


def label_map_to_results(label_map: np.ndarray, image_id: int, *,
                         stuff_start_id: int = categories.FIRST_STUFF_ID
                         ) -> list[dict[str, Any]]:
  """One image's [H, W] COCO-id label map → its results (cocostuffapi `segmentationToCocoResult`).

  One result per label >= `stuff_start_id`, ascending: `image_id`, `category_id` and the
  label's pixels as compressed RLE (`counts` a str).
  """
  label_map = np.asarray(label_map)
  if label_map.ndim != 2 or not label_map.size:
    raise ValueError(f"image {image_id}: a label map must be a non-empty [H, W] array, got "
                     f"shape {label_map.shape} (an RGB image instead of an indexed one?)")
  results = []
  for label in np.unique(label_map):
    if label < stuff_start_id:
      continue
    rle = coco_eval.encode_masks((label_map == label)[None])[0]
    results.append(dict(image_id=int(image_id), category_id=int(label), segmentation=rle))
  return results


def results_to_label_map(results: Sequence[dict[str, Any]], height: int, width: int
                         ) -> np.ndarray:
  """One image's results → [H, W] uint8 COCO-id label map, 0 where no result.

  Raises if two results cover one pixel (cocostuffapi's `checkUniquePixelLabel`) or a
  mask is not H × W.
  """
  out = np.zeros((height, width), np.uint8)
  for r in results:
    mask = mask_utils.decode(r["segmentation"]).astype(bool)
    if mask.shape != (height, width):
      raise ValueError(f"image {r['image_id']}: category {r['category_id']} mask is "
                       f"{mask.shape[0]}x{mask.shape[1]}, the image {height}x{width}")
    if out[mask].any():
      raise ValueError(f"image {r['image_id']}: category {r['category_id']} overlaps "
                       "another result; every pixel may have one label")
    out[mask] = r["category_id"]
  return out


def write_png(path, label_map: np.ndarray) -> None:
  """Writes a [H, W] COCO-id label map as an indexed (mode P) PNG, pixel value = id."""
  label_map = np.asarray(label_map)
  if label_map.ndim != 2 or label_map.dtype != np.uint8:
    raise ValueError(f"{path}: a label map must be [H, W] uint8, got {label_map.shape} "
                     f"{label_map.dtype}")
  image = Image.fromarray(label_map, mode="P")
  image.putpalette(_PALETTE)
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  epath.Path(path).write_bytes(buf.getvalue())


def read_png(path) -> np.ndarray:
  """An indexed or greyscale label-map PNG → [H, W] uint8 (pixel values, palette ignored)."""
  with epath.Path(path).open("rb") as f:
    image = Image.open(f)
    image.load()
  if image.mode not in ("P", "L"):
    raise ValueError(f"{path}: mode {image.mode!r}; a label map must be an indexed (P) or "
                     "greyscale (L) PNG whose pixel values are COCO ids")
  return np.asarray(image)


def image_id_from_name(name: str) -> int:
  """`000000000934.png` or `COCO_val2014_000000000934.png` → 934 (as `pngToCocoResultDemo`)."""
  match = re.fullmatch(r"(?:[A-Za-z]+_[A-Za-z]+\d*_)?(\d+)\.png", name)
  if not match:
    raise ValueError(f"{name}: not a COCO image file name (000000000934.png)")
  return int(match.group(1))


def pngs_to_results(png_dir) -> list[dict[str, Any]]:
  """Every `*.png` label map in `png_dir` (sorted by name) → one results list."""
  paths = sorted(p for p in epath.Path(png_dir).iterdir() if p.name.endswith(".png"))
  if not paths:
    raise FileNotFoundError(f"no .png label maps in {png_dir}")
  results = []
  for path in paths:
    results += label_map_to_results(read_png(path), image_id_from_name(path.name))
  if not results:  # The official converter refuses this too: COCO cannot load it.
    raise ValueError(f"the label maps in {png_dir} hold no label >= "
                     f"{categories.FIRST_STUFF_ID}: no results")
  return results


def write_results(out_dir, results: Sequence[dict[str, Any]], sizes: dict[int, tuple[int, int]]
                  ) -> None:
  """Writes `stuff_results/<image id:012d>.png` and `stuff_results.json` into `out_dir`.

  The PNGs hold every label of `results` (things too), the JSON the labels >= 92: what
  `pngToCocoResult` makes of the PNGs.

  Args:
    out_dir: created if missing.
    results: the results of all images (`label_map_to_results`, any `stuff_start_id`).
    sizes: {image id: (H, W)} of every image to write; an image without results gets a
      PNG of zeros.
  """
  out_dir = epath.Path(out_dir)
  png_dir = out_dir / "stuff_results"
  png_dir.mkdir(parents=True, exist_ok=True)
  by_image: dict[int, list] = {i: [] for i in sizes}
  for r in results:
    by_image[r["image_id"]].append(r)
  for image_id, (height, width) in sizes.items():
    write_png(png_dir / f"{image_id:012d}.png",
              results_to_label_map(by_image[image_id], height, width))
  stuff = [r for r in results if r["category_id"] >= categories.FIRST_STUFF_ID]
  (out_dir / "stuff_results.json").write_text(json.dumps(stuff))


class OfficialResults:
  """The official results of the label maps an `evaluator.Evaluator` paints; `write` saves
  them (`write_results`). A consumer of the `Evaluator` (`add_image`, `reset`, `state`,
  `merge`, `result`, `write`).
  """

  def __init__(self, class_set):
    self.class_set = class_set
    self.reset()

  def reset(self) -> None:
    """Forgets the added images."""
    self.results: list[dict[str, Any]] = []
    self.sizes: dict[int, tuple[int, int]] = {}

  def add_image(self, image_id: int, image_dets: dict[str, Any]) -> None:
    """One image's `label` [H, W] training ids (things too: they go into the PNG)."""
    label = to_coco_label_map(image_dets["label"], self.class_set)
    self.results += label_map_to_results(label, image_id, stuff_start_id=1)
    self.sizes[int(image_id)] = label.shape

  def state(self) -> dict[str, Any]:
    return dict(results=self.results, sizes=self.sizes)

  def merge(self, states: Sequence[dict[str, Any]]) -> None:
    """Adds other `OfficialResults`' `state()`s (other images)."""
    for st in states:
      self.results += st["results"]
      self.sizes.update(st["sizes"])

  def result(self) -> dict[str, float]:
    return {}  # The metrics of these results are the evaluator's `stuff/*`.

  def write(self, out_dir) -> None:
    write_results(out_dir, self.results, self.sizes)


def score(coco_gt, results: Sequence[dict[str, Any]], *, add_other: bool = True
          ) -> dict[str, dict]:
  """The official metrics of results on every image of a stuff ground truth.

  As `COCOStuffeval(cocoGt, cocoRes, addOther=add_other)`: each image needs a result;
  result labels must be classes (`other` only with `add_other`); GT pixels of no class
  (unlabeled, or `other` without `add_other`) are ignored.

  Args:
    coco_gt: `coco_eval.load_ground_truth` of the stuff JSON with the class set `stuff`
      (add_other) or `stuff_no_other`.
    results: `label_map_to_results` dicts.
    add_other: whether `other` (183) is a class.

  Returns:
    `stuff_metrics.summarize` groups (`stuff`, `stuff_supercat`, ...).
  """
  class_set = categories.get_class_set("stuff" if add_other else "stuff_no_other")
  lut = np.zeros(256, np.int32)  # COCO id → training id; 0 (no label) → `other` or a miss.
  lut[list(class_set.coco_ids)] = np.arange(1, class_set.num_classes + 1)
  lut[0] = stuff_metrics.other_index(class_set)
  by_image: dict[int, list] = {i: [] for i in coco_gt.getImgIds()}
  for r in results:
    if r["image_id"] not in by_image:
      raise ValueError(f"result for image {r['image_id']}, which is not in the ground truth")
    if not class_set.contains(r["category_id"]):
      raise ValueError(f"image {r['image_id']}: category {r['category_id']} is not a class "
                       f"of {class_set.name!r}")
    by_image[r["image_id"]].append(r)
  missing = [i for i, rs in by_image.items() if not rs]
  if missing:
    raise ValueError(f"{len(missing)} ground-truth images have no result, e.g. {missing[:5]}")
  confusion = 0
  for image_id, rs in by_image.items():
    image = coco_gt.imgs[image_id]
    pred = lut[results_to_label_map(rs, image["height"], image["width"])]
    confusion = confusion + stuff_metrics.confusion_matrix(
        stuff_metrics.ground_truth_label_map(coco_gt, image_id, class_set), pred,
        class_set.num_classes)
  return stuff_metrics.summarize(confusion, class_set)


def main(argv):
  del argv
  f = flags.FLAGS
  results = pngs_to_results(f.png_dir)
  epath.Path(f.output).write_text(json.dumps(results))
  print(f"{len(results)} results written to {f.output}")
  if f.gt_json:
    add_other = not f.no_other
    class_set = categories.get_class_set("stuff" if add_other else "stuff_no_other")
    groups = score(coco_eval.load_ground_truth([f.gt_json], class_set), results,
                   add_other=add_other)
    for group, title in (("stuff", "leaves"), ("stuff_supercat", "supercategories")):
      print(f"{title}: " + ", ".join(f"{k} {groups[group][k]:.6f}" for k in STATS))


if __name__ == "__main__":  # Flags defined here only: the evaluator imports this module.
  flags.DEFINE_string("png_dir", None, "Folder of label-map PNGs (pixel = COCO id).")
  flags.DEFINE_string("output", None, "Results JSON to write.")
  flags.DEFINE_string("gt_json", None, "Optional COCO-Stuff GT JSON to score against.")
  flags.DEFINE_bool("no_other", False, "Score without `other` (addOther=False).")
  flags.mark_flags_as_required(["png_dir", "output"])
  app.run(main)
