"""The official COCO panoptic ground truth, what class set `panoptic` is scored against.

`GroundTruth` reads ROOT/annotations/panoptic_val2017.json and, image by image as the
evaluation reaches it (`load`), its PNG (`panoptic_reader`'s layout). Its `coco` holds every
image of the JSON and, per loaded image, one annotation per thing segment and per stuff
category (`panoptic_reader.segment_annotations`, the masks training reads): COCO AP and the
semantic metrics score against it. Called with an image id, it gives that image's official
panoptic map and `segments_info`: PQ scores against these (`panoptic.PanopticEvaluator`,
metrics `panoptic_coco/...`), as panopticapi's `pq_compute` does on the same files.

A PNG costs about 50 ms (decode, segment masks as RLE) on the shared 2-core development
machine, so evaluating N images decodes N PNGs, once per run (`run_eval` keeps the
evaluator): the evaluation's first image waits for nothing, and `eval.num_images` images
decode that many, not val2017's 5,000 (4 minutes). The PNGs of images the reader skips
(missing, corrupt, of another size: module doc there) are not in the evaluated split; one
reached here raises.
"""

import collections
from typing import Any, Sequence

from absl import logging
import numpy as np

from maskrcnn_jax.data import panoptic_reader
from maskrcnn_jax.evaluation import coco_eval


class GroundTruth:
  """COCO panoptic ground truth: `coco` (detection format, of the loaded images) and
  `self(image_id)` (PNG)."""

  prefix = "panoptic_coco"  # Metric names: PQ against the official annotations.

  def __init__(self, annotation_files: Sequence[str], class_set):
    """Reads the panoptic JSON; no PNG yet.

    Args:
      annotation_files: [ROOT/annotations/panoptic_{split}2017.json].
      class_set: the `panoptic` class set.
    """
    if len(annotation_files) != 1:
      raise ValueError(f"one COCO panoptic JSON is scored against, got {annotation_files}")
    path = annotation_files[0]
    counts = collections.Counter()
    images, self._anns = panoptic_reader.index_json(path, class_set, counts)
    if counts:
      logging.warning("%s: ground truth of %d images; bad input (panoptic_reader): %s", path,
                      len(images), dict(sorted(counts.items())))
    self._png_dir = panoptic_reader.png_dir(path)
    self.coco = coco_eval.ground_truth_of([images[i] for i in sorted(images)], [], class_set)
    self._loaded: set[int] = set()
    self._last: tuple[int, np.ndarray] | None = None  # The latest PNG, for `__call__`.

  def _read(self, image_id: int) -> np.ndarray:
    """[H, W] segment ids of the image's PNG (`panoptic_reader.read_png`); ValueError if
    it is unreadable."""
    if self._last is not None and self._last[0] == image_id:
      return self._last[1]
    image = self.coco.imgs[image_id]
    pan, _, message = panoptic_reader.read_png(
        self._png_dir / self._anns[image_id]["file_name"], image["height"], image["width"])
    if pan is None:
      raise ValueError(f"{message.removesuffix(': skipped')}: the data reader leaves image "
                       f"{image_id} out, yet it was evaluated")
    self._last = image_id, pan
    return pan

  def load(self, image_ids: Sequence[int]) -> None:
    """Adds the annotations of the images not loaded yet to `coco`, from their PNGs."""
    for image_id in image_ids:
      if image_id in self._loaded:
        continue
      counts, warnings = collections.Counter(), []
      anns = panoptic_reader.segment_annotations(
          self._read(image_id), self._anns[image_id]["segments_info"],
          str(self._png_dir / self._anns[image_id]["file_name"]), counts, warnings)
      for message in warnings:
        logging.warning("%s", message)
      coco_eval.add_annotations(self.coco, [dict(a, image_id=image_id) for a in anns])
      self._loaded.add(image_id)

  def state(self, image_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """The `coco` annotations of loaded images, for `merge` in another process."""
    return {i: self.coco.imgToAnns[i] for i in image_ids}

  def merge(self, state: dict[int, list[dict[str, Any]]]) -> None:
    """Adds another `GroundTruth`'s `state` (images it loaded) without decoding them."""
    new = [i for i in state if i not in self._loaded]
    coco_eval.add_annotations(self.coco, [a for i in new for a in state[i]])
    self._loaded.update(new)

  def __call__(self, image_id: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The image's official ([H, W] segment ids, `segments_info`)."""
    return self._read(image_id), self._anns[image_id]["segments_info"]
