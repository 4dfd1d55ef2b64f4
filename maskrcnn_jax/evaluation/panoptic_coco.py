"""The official COCO panoptic ground truth, what class set `panoptic` is scored against.

`GroundTruth` reads ROOT/annotations/panoptic_val2017.json and its PNGs
(`panoptic_reader`'s layout). Its `coco` holds one annotation per thing segment and per
stuff category of an image (`panoptic_reader.segment_annotations`, the masks training
reads): COCO AP and the semantic metrics score against it. Called with an image id, it
gives that image's official panoptic map and `segments_info`: PQ scores against these
(`panoptic.PanopticEvaluator`, metrics `panoptic_coco/...`), as panopticapi's `pq_compute`
does on the same files. Images the reader skips (module doc there) are left out here too,
so that the evaluated split equals the ground truth. Reading takes about 50 ms per image
(PNG decode, segment masks as RLE) on the shared 2-core development machine: for val2017's
5,000 images some 4 minutes, once per run (`run_eval` keeps the evaluator).
"""

import collections
from typing import Any, Sequence

from absl import logging
import numpy as np

from maskrcnn_jax.data import panoptic_reader
from maskrcnn_jax.evaluation import coco_eval


class GroundTruth:
  """COCO panoptic ground truth: `coco` (detection format) and `self(image_id)` (PNG)."""

  prefix = "panoptic_coco"  # Metric names: PQ against the official annotations.

  def __init__(self, annotation_files: Sequence[str], class_set):
    """Reads the panoptic JSON and every PNG once.

    Args:
      annotation_files: [ROOT/annotations/panoptic_{split}2017.json].
      class_set: the `panoptic` class set.
    """
    if len(annotation_files) != 1:
      raise ValueError(f"one COCO panoptic JSON is scored against, got {annotation_files}")
    path = annotation_files[0]
    counts, warnings = collections.Counter(), []
    images, self._anns = panoptic_reader.index_json(path, class_set, counts)
    self._png_dir = panoptic_reader.png_dir(path)
    self._sizes = {i: (image["height"], image["width"]) for i, image in images.items()}
    annotations = []
    for image_id in sorted(images):
      pan, problem, message = self._read(image_id)
      if pan is None:
        counts[problem] += 1
        warnings.append(message)
        del images[image_id], self._anns[image_id], self._sizes[image_id]
        continue
      annotations += [dict(a, image_id=image_id) for a in panoptic_reader.segment_annotations(
          pan, self._anns[image_id]["segments_info"],
          str(self._png_dir / self._anns[image_id]["file_name"]), counts, warnings)]
    for message in warnings:
      logging.warning("%s", message)
    if counts:
      logging.warning("%s: ground truth of %d images; bad input (panoptic_reader): %s", path,
                      len(images), dict(sorted(counts.items())))
    self.coco = coco_eval.ground_truth_of([images[i] for i in sorted(images)], annotations,
                                          class_set)

  def _read(self, image_id: int):
    """`panoptic_reader.read_png` of the image's PNG."""
    return panoptic_reader.read_png(self._png_dir / self._anns[image_id]["file_name"],
                                    *self._sizes[image_id])

  def __call__(self, image_id: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The image's official ([H, W] segment ids, `segments_info`)."""
    pan, _, message = self._read(image_id)
    if pan is None:
      raise ValueError(message)
    return pan, self._anns[image_id]["segments_info"]
