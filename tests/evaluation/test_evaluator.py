import json
import os
import pickle

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import pytest

from bench import fakes
from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import evaluator as evaluator_lib


@pytest.mark.parametrize("name", ["stuff", "stuff_no_other"])
def test_perfect_predictions(name, stuff_json, make_perfect_batch):
  cs = categories.get_class_set(name)
  ev = evaluator_lib.Evaluator([stuff_json], cs, num_pictures=1)
  batch, dets = make_perfect_batch(cs)
  ev.add(batch, dets)  # The padding image (id not in the GT) is skipped.
  metrics = ev.result()
  assert metrics["num_images"] == 2
  for key in ("bbox/AP", "segm/AP", "segm/AP50", "stuff/mIoU", "stuff/pAcc",
              "stuff_supercat/mIoU", "stuff_no_other/mIoU", "per_image/precision",
              "per_image/recall"):
    assert metrics[key] == pytest.approx(1.0), key
  rows = [r for r in ev.per_class() if r["gt_pixels"]]
  assert sorted(r["coco_id"] for r in rows) == sorted(
      c for c in (149, 157, 169, 183) if cs.contains(c))
  for r in rows:
    assert r["IoU"] == 1.0 and r["segm_AP"] == pytest.approx(1.0)
    assert r["IoU_no_other"] == 1.0 or (r["coco_id"] == 183 and np.isnan(r["IoU_no_other"]))


def test_things_and_stuff_perfect(stuff_json, instances_json, make_perfect_batch):
  cs = categories.get_class_set("things_and_stuff")
  ev = evaluator_lib.Evaluator([stuff_json, instances_json], cs)
  batch, dets = make_perfect_batch(cs)
  # Image 7: the person (polygon 40..60 x 0..10) as a fourth detection.
  dets["boxes"][0, 3] = np.array([40, 0, 60, 10]) * batch["image_info"][0, 2]
  dets["classes"][0, 3] = cs.to_train_id(1)
  dets["scores"][0, 3], dets["masks"][0, 3], dets["valid"][0, 3] = 0.95, 1.0, True
  ev.add(batch, dets)
  metrics = ev.result()
  assert metrics["segm/AP"] == pytest.approx(1.0)
  assert metrics["stuff/mIoU"] == pytest.approx(1.0)


def test_empty_predictions(stuff_json, make_perfect_batch, tmp_path):
  cs = categories.get_class_set("stuff")
  ev = evaluator_lib.Evaluator([stuff_json], cs)
  batch, dets = make_perfect_batch(cs)
  dets["valid"][:] = False
  ev.add(batch, dets)
  metrics = ev.write(str(tmp_path))
  assert metrics["segm/AP"] == 0.0 and metrics["bbox/AP"] == 0.0
  # Unpainted pixels count as `other`: only `other` has IoU > 0.
  rows = ev.per_class()
  other = rows[cs.to_train_id(183) - 1]
  assert 0 < other["IoU"] < 1 and other["acc"] == 1.0
  assert metrics["stuff/mIoU"] == pytest.approx(other["IoU"] / 4)
  assert metrics["stuff_no_other/mIoU"] == 0.0
  assert np.isnan(metrics["per_image/precision"]) and metrics["per_image/recall"] == 0.0
  assert json.loads((tmp_path / "coco_results.json").read_text()) == []


def test_rejects_unknown_and_repeated_images(stuff_json, make_perfect_batch):
  cs = categories.get_class_set("stuff")
  ev = evaluator_lib.Evaluator([stuff_json], cs)
  batch, dets = make_perfect_batch(cs)
  ev.add(batch, dets)
  with pytest.raises(ValueError, match="evaluated twice"):
    ev.add(batch, dets)
  batch["image_valid"][-1] = True
  with pytest.raises(ValueError, match="12345 is not in the ground truth"):
    evaluator_lib.Evaluator([stuff_json], cs).add(batch, dets)


def test_score_order_decides_the_painted_class(stuff_json, make_perfect_batch):
  cs = categories.get_class_set("stuff_no_other")
  batch, dets = make_perfect_batch(cs)
  # Image 9: a whole-image tree mask with a score below the road's, then above it.
  scale = batch["image_info"][1, 2]
  dets["boxes"][1, 2] = np.array([0, 0, 30, 50]) * scale
  dets["classes"][1, 2], dets["masks"][1, 2], dets["valid"][1, 2] = cs.to_train_id(169), 1, 1
  results = []
  for score in (0.5, 0.95):
    dets["scores"][1, 2] = score
    ev = evaluator_lib.Evaluator([stuff_json], cs)
    ev.add(batch, dets)
    results.append(ev.per_class()[cs.to_train_id(149) - 1]["IoU"])
  assert results[0] == pytest.approx(1.0)  # Road (0.8) painted over the tree (0.5).
  # The tree (0.95) covers image 9's road: 1200 of 1800 road pixels remain (image 7).
  assert results[1] == pytest.approx(2 / 3)


def test_write_outputs_and_summaries(stuff_json, make_perfect_batch, tmp_path):
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  cs = categories.get_class_set("stuff")
  log_dir = tmp_path / "run"
  writer = metric_writers.SummaryWriter(str(log_dir))
  for step in range(1, 7):
    writer.write_scalars(step * 10, {"train/total_loss": 3.0 / step,
                                     "train/rpn_objectness_loss": 1.0 / step,
                                     "train/stage": float(step > 3)})
  writer.flush()
  ev = evaluator_lib.Evaluator([stuff_json], cs, num_pictures=1)
  batch, dets = make_perfect_batch(cs)
  ev.add(batch, dets)
  out = tmp_path / "eval"
  metrics = ev.write(str(out), writer=writer, step=60, log_dir=str(log_dir))
  writer.close()
  names = set(os.listdir(out))
  for name in ("metrics.json", "coco_results.json", "per_class.csv", "per_supercategory.csv",
               "per_image.csv", "confusion.csv", "confusion.png", "confusion_compressed.png",
               "confusion_supercat.png", "prediction_counts.png", "precision_recall.png", "collage_7.png",
               "proposals_7.png", "loss_curves.png"):
    assert name in names, name
  assert json.loads((out / "metrics.json").read_text())["segm/AP"] == metrics["segm/AP"]
  lines = (out / "per_class.csv").read_text().splitlines()
  assert len(lines) == 1 + cs.num_classes and lines[0].startswith("train_id,coco_id,name")
  # 4 of the 92 classes have pixels: the compressed matrix is a fraction of the whole.
  compressed = Image.open(out / "confusion_compressed.png").size
  assert compressed[1] < Image.open(out / "confusion.png").size[1] / 3
  collage = np.asarray(Image.open(out / "collage_7.png"))
  assert collage.ndim == 3 and collage.shape[1] > 2 * collage.shape[0] and collage.std() > 10
  from maskrcnn_jax.evaluation import pictures  # pylint: disable=g-import-not-at-top
  scalars = pictures.read_scalars(str(log_dir))
  assert scalars["segm/AP"][0].tolist() == [60]
  np.testing.assert_allclose(scalars["segm/AP"][1], [metrics["segm/AP"]])


def test_predict_helpers(make_perfect_batch):
  cs = categories.get_class_set("stuff")
  batch, dets = make_perfect_batch(cs)
  info = batch["image_info"][0]
  image_dets = evaluator_lib.image_detections(dets, 0, info)
  assert image_dets["masks"].shape == (3, 40, 60)
  np.testing.assert_allclose(image_dets["boxes"][0], [0, 20, 60, 40], atol=1e-4)
  results = evaluator_lib.detections_to_coco(7, image_dets, cs)
  assert [r["category_id"] for r in results] == [149, 157, 183]
  dets["boxes"][0, 1, 2] = np.nan
  assert len(evaluator_lib.image_detections(dets, 0, info)["scores"]) == 2  # NaN dropped.
  dets["boxes"][0, 2, 3] = dets["boxes"][0, 2, 1]
  assert len(evaluator_lib.image_detections(dets, 0, info)["scores"]) == 1  # Empty dropped.
  image = evaluator_lib.original_image(batch["image"][0], info)
  assert image.shape == (40, 60, 3)
  overlay = evaluator_lib.draw_overlay(image, image_dets, cs, score_threshold=0.75)
  assert overlay.dtype == np.uint8 and overlay.ndim == 3 and overlay.std() > 5


def _device_pasted(ev, dets, infos):
  """`dets` plus the device's pasting (as the predict step of `run_eval` adds it)."""
  import jax  # pylint: disable=g-import-not-at-top
  from maskrcnn_jax.evaluation import masks  # pylint: disable=g-import-not-at-top
  frame = ev.frame_size()
  keys = ("boxes", "scores", "classes", "masks", "valid")
  out = jax.jit(lambda d, i: masks.paste_batch_device(
      d, i, frame=frame, capacity=masks.RLE_CAPACITY_PER_SIDE * frame, threshold=0.5,
      fill=ev.fill))({k: dets[k] for k in keys}, infos)
  return {**dets, **jax.device_get(out)}


def _fake_batches(gt_path, cs, num_images=6, batch=3):
  """Random detections (blobs, one ragged mask per image) plus one per GT region."""
  rng = np.random.default_rng(3)
  fakes.fake_ground_truth(gt_path, num_images, 45, 70, cs, rng)
  gt = json.loads(open(gt_path).read())["annotations"]
  out = []
  for s in range(0, num_images, batch):
    b, d = fakes.fake_batch(range(s + 1, s + batch + 1), 45, 70, 1.3, 15, cs.num_classes,
                            rng)
    d["masks"][:, 0] = rng.uniform(size=d["masks"][:, 0].shape)
    for i, image_id in enumerate(b["image_id"]):
      regions = [a for a in gt if a["image_id"] == image_id]
      for j, a in enumerate(regions, start=1):
        x, y, w, h = mask_utils.toBbox(a["segmentation"])
        d["boxes"][i, j] = np.array([x, y, x + w, y + h]) * 1.3
        d["classes"][i, j] = cs.to_train_id(a["category_id"])
        d["masks"][i, j] = fakes.blob_masks(rng, ()) * 0.4 + 0.6
    out.append((b, d))
  return out


def test_device_pasting_gives_the_host_numbers(tmp_path):
  cs = categories.get_class_set("stuff")
  batches = _fake_batches(str(tmp_path / "gt.json"), cs)
  host = evaluator_lib.Evaluator([str(tmp_path / "gt.json")], cs, num_pictures=1)
  device = evaluator_lib.Evaluator([str(tmp_path / "gt.json")], cs, num_pictures=1)
  for batch, dets in batches:
    host.add(batch, dets)
    device.add(batch, _device_pasted(device, dets, batch["image_info"]))
  expected, got = host.result(), device.result()
  assert expected["segm/AP50"] > 0 and expected["stuff/mIoU"] > 0
  for k, v in expected.items():
    assert got[k] == pytest.approx(v, abs=1e-4, nan_ok=True), k
  pixels = host.per_class()
  for a, b in zip(pixels, device.per_class()):
    assert abs(a["pred_pixels"] - b["pred_pixels"]) <= 0.001 * max(a["pred_pixels"], 100)


def test_device_pasting_of_perfect_predictions(stuff_json, make_perfect_batch):
  cs = categories.get_class_set("stuff")
  ev = evaluator_lib.Evaluator([stuff_json], cs)
  batch, dets = make_perfect_batch(cs)
  ev.add(batch, _device_pasted(ev, dets, batch["image_info"]))
  metrics = ev.result()
  assert metrics["num_images"] == 2
  for key in ("bbox/AP", "segm/AP", "stuff/mIoU", "per_image/recall"):
    assert metrics[key] == pytest.approx(1.0), key


@pytest.mark.slow
def test_merged_shards_equal_one_evaluator(tmp_path):
  cs = categories.get_class_set("stuff")
  gt = str(tmp_path / "gt.json")
  batches = _fake_batches(gt, cs)
  one = evaluator_lib.Evaluator([gt], cs, num_pictures=0, coco_backend="pycocotools")
  parts = [evaluator_lib.Evaluator([gt], cs, num_pictures=0, coco_backend="pycocotools")
           for _ in batches]
  for part, (batch, dets) in zip(parts, batches):
    one.add(batch, dets)
    part.add(batch, dets)
  merged = parts[0]
  merged.merge([pickle.loads(pickle.dumps(p.state())) for p in parts[1:]])
  assert merged.result() == pytest.approx(one.result(), rel=0, abs=0, nan_ok=True)
  np.testing.assert_array_equal(merged.pictures()["confusion"], one.pictures()["confusion"])
  with pytest.raises(ValueError, match="evaluated twice"):
    merged.merge([parts[1].state()])
  with pytest.raises(ValueError, match="after merge"):
    merged.add(*batches[0])
  for part in parts:  # faster_coco_eval: the merged results, scored here.
    part.coco_backend = "faster_coco_eval"
  fast = evaluator_lib.Evaluator([gt], cs, num_pictures=0, coco_backend="faster_coco_eval")
  fast.add(*batches[0])
  fast.merge([p.state() for p in parts[1:]])
  assert fast.result() == pytest.approx(one.result(), rel=0, abs=1e-12, nan_ok=True)


def test_merged_shards_carry_panoptic_and_official_results(tmp_path, monkeypatch):
  # 171-class figures take seconds each; the pictures are tested above.
  monkeypatch.setattr(evaluator_lib.Evaluator, "pictures", lambda self: {})
  cs = categories.get_class_set("things_and_stuff")
  gt = str(tmp_path / "gt.json")
  batches = _fake_batches(gt, cs)
  kwargs = dict(num_pictures=0, panoptic=dict(stuff_area_threshold=100),
                official_export=True)
  one = evaluator_lib.Evaluator([gt], cs, **kwargs)
  parts = [evaluator_lib.Evaluator([gt], cs, **kwargs) for _ in batches]
  for part, (batch, dets) in zip(parts, batches):
    one.add(batch, dets)
    part.add(batch, dets)
  merged = parts[0]
  merged.merge([pickle.loads(pickle.dumps(p.state())) for p in parts[1:]])
  expected = one.write(tmp_path / "one")
  pq = "panoptic_cocostuff/PQ"
  assert 0 < expected[pq] < 1 and 0 < expected[f"{pq}_stuff"] < 1
  assert merged.write(tmp_path / "merged") == pytest.approx(expected, rel=0, abs=0,
                                                            nan_ok=True)
  for name in ("panoptic.json", "panoptic_gt.json", "stuff_results.json"):
    assert ((tmp_path / "merged" / name).read_text()
            == (tmp_path / "one" / name).read_text()), name
  for folder in ("panoptic", "panoptic_gt", "stuff_results"):
    files = sorted((tmp_path / "one" / folder).iterdir())
    assert len(files) == 6
    assert [f.read_bytes() for f in files] == [
        (tmp_path / "merged" / folder / f.name).read_bytes() for f in files], folder
  one.reset()
  assert not any(one.consumers[0].stats) and not one.consumers[1].results


def test_scored_images_are_counted_against_the_ground_truth(stuff_json, make_perfect_batch):
  cs = categories.get_class_set("stuff")
  ev = evaluator_lib.Evaluator([stuff_json], cs)
  batch, dets = make_perfect_batch(cs)
  batch["image_valid"][1] = False
  ev.add(batch, dets)
  metrics = ev.result()
  assert metrics["num_images"] == 1 and metrics["num_gt_images"] == 2
