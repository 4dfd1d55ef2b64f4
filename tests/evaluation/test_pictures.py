import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax.evaluation import pictures


def _check(image, min_h=100, min_w=100):
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  assert image.shape[0] >= min_h and image.shape[1] >= min_w
  assert image.std() > 1  # Something was drawn.


def test_confusion_figure_grows_with_classes():
  small = np.arange(16).reshape(4, 4)
  small[0] = 0
  _check(pictures.confusion_figure(small, ["a", "b", "c"]))
  big = np.random.default_rng(0).integers(0, 50, (93, 93))
  big[0] = 0
  image = pictures.confusion_figure(big, [f"class-{i}" for i in range(92)], log=False)
  _check(image, 1500, 1500)  # About 16 px per class: names stay readable.
  with pytest.raises(ValueError, match="does not fit"):
    pictures.confusion_figure(small, ["a", "b"])


def test_counts_and_precision_recall_figures():
  _check(pictures.prediction_counts_figure(np.array([0, 3, 10]), np.array([2, 0, 7]),
                                           ["a", "b", "c"]))
  _check(pictures.precision_recall_figure(np.array([1.0, 0.5, np.nan]),
                                          np.array([0.5, np.nan, 0.0])))


def test_image_pictures_and_png(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (48, 64, 3), np.uint8)
  _check(pictures.proposals_picture(image, np.array([[2, 2, 30, 40], [10, 5, 60, 20]]),
                                    np.array([0.9, 0.2]), top_n=1))
  gt = np.zeros((48, 64), np.int32)
  gt[:20] = 2
  masks = np.zeros((1, 48, 64), bool)
  masks[0, 10:30, 5:40] = True
  preds = dict(boxes=np.array([[5, 10, 40, 30]], np.float32), classes=np.array([1]),
               scores=np.array([0.8]), masks=masks)
  collage = pictures.collage(image, gt, preds, ["sky", "grass"])
  _check(collage)
  assert collage.shape[1] > 2 * collage.shape[0]  # Three panels side by side.
  path = tmp_path / "c.png"
  pictures.save_png(str(path), collage)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), collage)


def test_blend_colours_only_labelled_pixels():
  image = np.full((2, 2, 3), 100, np.uint8)
  label = np.array([[0, 1], [0, 0]])
  colors = np.array([[0, 0, 0], [200, 0, 0]], np.uint8)
  out = pictures.blend(image, label, colors, alpha=0.5)
  np.testing.assert_array_equal(out[0, 1], [150, 50, 50])
  np.testing.assert_array_equal(out[1], image[1])


def test_stage_boundaries():
  steps = np.array([10, 20, 30, 40, 50])
  assert pictures.stage_boundaries(steps, np.array([0, 0, 1, 1, 2])) == [20.0, 40.0]


def test_loss_curves_from_event_files(tmp_path):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.SummaryWriter(str(tmp_path))
  for step in range(1, 9):
    writer.write_scalars(step * 5, {"train/total_loss": 2.0 / step,
                                    "train/mask_loss": 0.5 / step,
                                    "train/stage": float(step > 4)})
  writer.write_scalars(40, {"val/total_loss": 0.4})
  writer.close()
  scalars = pictures.read_scalars(str(tmp_path))
  np.testing.assert_array_equal(scalars["train/total_loss"][0], np.arange(5, 45, 5))
  np.testing.assert_allclose(scalars["train/mask_loss"][1], 0.5 / np.arange(1, 9), rtol=1e-6)
  _check(pictures.loss_curves(str(tmp_path)), 200, 400)
  with pytest.raises(ValueError, match="no eval/"):
    pictures.loss_curves(str(tmp_path), prefix="eval/")


def test_write_csv(tmp_path):
  path = tmp_path / "t.csv"
  pictures.write_csv(str(path), [dict(a=1, b="x"), dict(a=2, b="y")])
  assert path.read_text().splitlines() == ["a,b", "1,x", "2,y"]
