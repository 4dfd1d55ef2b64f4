"""`--mode=inspect` and the inspection notebooks on the tiny config's trained run."""

import json
import pathlib
import pickle
import runpy

from matplotlib import colormaps
import numpy as np
from PIL import Image
import pytest

from maskrcnn_jax import run
from maskrcnn_jax.data import categories
from maskrcnn_jax.evaluation import pictures
from maskrcnn_jax.inspection import data as data_lib
from maskrcnn_jax.inspection import notebook
from maskrcnn_jax.inspection import run as inspection

# Slow: the shared trained run, and inspect mode on it (measured 37-70 s setup on 2 cores).
pytestmark = pytest.mark.slow

SECTIONS = ("data", "anchors", "rpn", "roi_heads", "predictions", "weights")
REPO = pathlib.Path(__file__).parents[2]
# Lines are searched up to REACH PNG pixels across where a box edge should be (they are
# antialiased, about 2 pixels wide); a mask's blend must match within TOL (RGB distance).
TOL, REACH = 12, 3


@pytest.fixture(scope="module")
def trained(tiny_workdir):
  """(config, workdir) of the tiny run (heads 2 steps, 4+ 2 steps), inspected on 2 images,
  statistics over 4 of its 8 training images."""
  config, workdir = tiny_workdir
  config.inspect.num_images, config.inspect.num_stats_images = 2, 4
  return config, workdir


@pytest.fixture(scope="module")
def inspected(trained):
  """(files `--mode=inspect` wrote, as `section/name`; the folder holding them)."""
  config, workdir = trained
  return run.run(config, str(workdir), "inspect"), workdir / "inspect"


def _read(path: pathlib.Path) -> np.ndarray:
  return np.asarray(Image.open(path).convert("RGB"))


class _Frame:
  """Where an S × S image is drawn in a figure picture (the largest block of non-white
  rows and columns): `png(x, y)` maps image coordinates (pixel i centred at i) to PNG
  (row, col)."""

  def __init__(self, picture: np.ndarray, side: int):
    drawn = (picture != 255).any(-1)
    top, bottom = self._longest(drawn.sum(1) > drawn.shape[1] / 2)
    left, right = self._longest(drawn[top:bottom].sum(0) > (bottom - top) / 2)
    self.top, self.left, self.scale = top, left, (bottom - top) / side
    assert abs((right - left) / (bottom - top) - 1) < 0.02, "not a square image"

  @staticmethod
  def _longest(on: np.ndarray) -> tuple[int, int]:
    """[start, end) of the longest run of True."""
    edges = np.flatnonzero(np.diff(np.r_[0, on.astype(int), 0]))
    return max(zip(edges[::2], edges[1::2]), key=lambda e: e[1] - e[0])

  def png(self, x, y) -> tuple[np.ndarray, np.ndarray]:
    return (np.round(self.top + (np.asarray(y) + 0.5) * self.scale).astype(int),
            np.round(self.left + (np.asarray(x) + 0.5) * self.scale).astype(int))


def _outline_distance(x: np.ndarray, y: np.ndarray, box: np.ndarray) -> np.ndarray:
  """Distance (image pixels) of points to the outline of a box (x1, y1, x2, y2)."""
  x1, y1, x2, y2 = box
  dx = np.maximum(np.maximum(x1 - x, x - x2), 0)
  dy = np.maximum(np.maximum(y1 - y, y - y2), 0)
  inside = np.minimum.reduce([x - x1, x2 - x, y - y1, y2 - y])
  return np.where((dx == 0) & (dy == 0), inside, np.hypot(dx, dy))


def _clear(x: np.ndarray, y: np.ndarray, boxes: np.ndarray, zones: np.ndarray,
           distance: float) -> np.ndarray:
  """Points farther than `distance` from every box outline and outside every zone."""
  keep = np.ones(len(x), bool)
  for box in boxes:
    keep &= _outline_distance(x, y, box) > distance
  for x1, y1, x2, y2 in zones:
    keep &= ~((x1 <= x) & (x <= x2) & (y1 <= y) & (y <= y2))
  return keep


def _outlines(picture: np.ndarray, side: int, boxes: np.ndarray, colors: np.ndarray,
              zones: np.ndarray = ()) -> tuple[int, int]:
  """(boxes whose outline is drawn in its colour, boxes with edge points to check).

  boxes: [N, 4] image pixels; colors: [N, 3] 0..255. Edge points are checked inside the
  image, a pixel or more from the corners, from every other box's outline and outside
  `zones` ([L, 4], where labels cover lines). Across a point, a line partly covers the
  background: a pixel within REACH must be at most half as far from the colour as the
  background on either side (points whose background is near the colour are undecided).
  An outline is drawn when at least half of its decided points show it.
  """
  frame = _Frame(picture, side)
  offsets = np.arange(-REACH - 2, REACH + 3)
  drawn = checked = 0
  for i, (x1, y1, x2, y2) in enumerate(boxes):
    xs, ys = np.arange(x1 + 1, x2 - 1, 0.5), np.arange(y1 + 1, y2 - 1, 0.5)
    x = np.concatenate([xs, xs, np.full_like(ys, x1), np.full_like(ys, x2)])
    y = np.concatenate([np.full_like(xs, y1), np.full_like(xs, y2), ys, ys])
    horizontal = np.arange(len(x)) < 2 * len(xs)
    keep = ((x >= 0) & (x <= side - 1) & (y >= 0) & (y <= side - 1)
            & _clear(x, y, np.delete(boxes, i, 0), zones, 1.0))
    rows, cols = frame.png(x[keep], y[keep])
    rows, cols = rows[:, None], cols[:, None]
    across = np.where(horizontal[keep][:, None, None], picture[rows + offsets, cols],
                      picture[rows, cols + offsets])  # [P, offsets, 3]
    distance = np.linalg.norm(across - np.asarray(colors[i], float), axis=-1)
    background = np.minimum(distance[:, 0], distance[:, -1])
    decided = background > 2 * TOL
    if decided.sum() < 4:
      continue
    checked += 1
    line = distance[decided, 2:-2].min(1)
    drawn += np.mean(line <= background[decided] / 2) >= 0.5
  return drawn, checked


def _painted(picture: np.ndarray, image: np.ndarray, gt: dict[str, np.ndarray],
             colors: np.ndarray, zones: np.ndarray) -> float:
  """The share of pixels in exactly one GT mask, clear of lines and labels, that the
  picture shows blended with their class colour (`pictures.blend`, alpha 0.55)."""
  owner = np.argmax(gt["masks"], 0)
  y, x = np.nonzero(gt["masks"].sum(0) == 1)
  keep = _clear(x.astype(float), y.astype(float), gt["boxes"], zones, 1.5)
  y, x = y[keep], x[keep]
  expected = 0.45 * image[y, x] + 0.55 * colors[gt["classes"][owner[y, x]]]
  shown = picture[_Frame(picture, len(image)).png(x, y)]
  return float(np.mean(np.linalg.norm(shown - expected, axis=-1) <= TOL))


@pytest.mark.slow(seconds=90)
def test_inspect_mode_writes_every_picture(trained, inspected):
  config, _ = trained
  written, root = inspected

  summary = json.loads((root / "summary.json").read_text())
  assert summary["trained"] and summary["step"] == 4
  for section in SECTIONS:
    assert any(name.startswith(f"{section}/") and name.endswith(".png") for name in written), section
  expected = ["data/class_histogram.png", "data/instance_sizes.png", "data/repeat_factors.png",
              "data/augmentation.png", "anchors/levels.png", "predictions/confusion.png",
              "predictions/segm_ap.png", "weights/norms.png", "weights/histograms.png",
              "weights/stages.png"]
  for name in expected:
    assert name in written
  assert sum(n.startswith("data/gt_") for n in written) == 2
  assert sum(n.startswith("rpn/after_nms_") for n in written) == 2
  for name in written:
    path = root / name
    assert path.stat().st_size > 0, name
    if name.endswith(".png"):
      image = np.asarray(Image.open(path))
      assert image.ndim == 3 and image.std() > 0, name  # Not a blank picture.

  recall = json.loads((root / "rpn" / "recall.json").read_text())
  assert recall["num_gt"] > 0 and 0 <= recall["recall@0.7"] <= recall["recall@0.5"] <= 1
  stats = json.loads((root / "data" / "statistics.json").read_text())
  assert stats["num_images"] == 4
  assert stats["repeat_factors"]["images"] == config.data.synthetic.num_train  # The whole split.
  # The stage table: heads trains no backbone parameter, 4+ trains res4 and res5 only.
  stages = {r.split(",")[0]: r.split(",") for r in
            (root / "weights" / "stages.csv").read_text().splitlines()}
  header = stages["module"]
  res3, res4 = (dict(zip(header, stages[f"backbone/res{i}"])) for i in (3, 4))
  assert float(res4["heads"]) == 0 and float(res4["4+"]) == 1
  assert float(res3["4+"]) == 0


def test_gt_pictures_draw_every_instance(trained, inspected):
  """Each GT box outlined in its class colour, each mask blended with it."""
  config, _ = trained
  _, root = inspected
  class_set = categories.get_class_set(config.data.class_set)
  colors = pictures.class_colors(class_set.num_classes).astype(int)
  seen = 0
  for batch in inspection.batches(config, "train", config.inspect.num_images):
    for b in np.flatnonzero(batch["image_valid"]):
      picture = _read(root / "data" / f"gt_{int(batch['image_id'][b])}.png")
      gt = data_lib.ground_truth(batch, b)
      # Labels sit on the top left corner: up to ~1 image pixel a character, 2 high.
      zones = np.array([[x1 - 1, y1 - 3, x1 + len(class_set.names[c - 1]) + 2, y1 + 1]
                        for (x1, y1, _, _), c in zip(gt["boxes"], gt["classes"])])
      drawn, checked = _outlines(picture, config.data.image_size, gt["boxes"],
                                 colors[gt["classes"]], zones)
      assert drawn == checked >= 0.75 * len(gt["boxes"]), (drawn, checked, len(gt["boxes"]))
      assert _painted(picture, batch["image"][b], gt, colors, zones) > 0.9
      seen += 1
  assert seen == config.inspect.num_images


def test_after_nms_pictures_draw_every_proposal(trained, inspected):
  """Each of the top valid proposals outlined in the colour of its objectness."""
  config, workdir = trained
  _, root = inspected
  state = inspection.load_model(config, str(workdir), inspection.prepare(config))
  for batch in inspection.batches(config, "train", config.inspect.num_images):
    test = inspection.forward(state, batch, train=False)
    for b in np.flatnonzero(batch["image_valid"]):
      valid = test["proposal_valid"][b]
      scores = test["proposal_scores"][b][valid]
      top = np.argsort(-scores, kind="stable")[:inspection.TOP_PROPOSALS]
      picture = _read(root / "rpn" / f"after_nms_{int(batch['image_id'][b])}.png")
      drawn, checked = _outlines(picture, config.data.image_size, test["proposals"][b][valid][top],
                                 colormaps["plasma"](scores[top])[:, :3] * 255)
      assert drawn == checked >= 0.75 * len(top), (drawn, checked, len(top))


@pytest.mark.parametrize("name, sections", [("inspect_data", SECTIONS[:1]),
                                            ("inspect_model", SECTIONS[1:])])
def test_notebook_writes_what_inspect_mode_writes(trained, inspected, tmp_path, monkeypatch,
                                                  name, sections):
  """The notebooks, run as scripts on the run's config, write the same files, byte for byte."""
  config, workdir = trained
  _, root = inspected
  (tmp_path / "config.pkl").write_bytes(pickle.dumps(config))
  (tmp_path / "config.py").write_text(
      "import pathlib\nimport pickle\n\n\ndef get_config():\n"
      "  return pickle.loads((pathlib.Path(__file__).parent / 'config.pkl').read_bytes())\n")
  out = tmp_path / "out"
  monkeypatch.setenv("INSPECT_CONFIG", str(tmp_path / "config.py"))
  monkeypatch.setenv("INSPECT_DATA_ROOT", config.data.root)
  monkeypatch.setenv("INSPECT_WORKDIR", str(workdir))
  monkeypatch.setenv("INSPECT_OUT", str(out))
  runpy.run_path(str(REPO / "docs" / "notebooks" / f"{name}.py"), run_name="__main__")
  assert sorted(p.name for p in out.iterdir()) == sorted(sections)
  for section in sections:
    names = sorted(p.name for p in (root / section).iterdir())
    assert sorted(p.name for p in (out / section).iterdir()) == names, section
    for n in names:
      assert (out / section / n).read_bytes() == (root / section / n).read_bytes(), n


def test_gallery_shows_pictures_values_and_tables():
  html = notebook.Gallery({"s/a.png": np.zeros((2, 2, 3), np.uint8), "s/b.json": {"x": 1},
                           "s/c.csv": [{"k": i} for i in range(12)]})._repr_html_()
  assert html.count('<img src="data:image/png;base64,') == 1
  assert '"x": 1' in html
  assert html.count("<tr>") == 1 + notebook.MAX_ROWS and "12 rows" in html
