"""prepare's command line: the config's data defaults, with the flags' values over them; bad
annotation files stop it in one line."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_command_line_builds_the_config_with_the_flags(synthetic_root, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "maskrcnn_jax.data.prepare", "--root", str(synthetic_root),
       "--data_dir", str(tmp_path), "--mask_size", "16"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "train: 8 images" in result.stdout and "validation: 5 images" in result.stdout
  assert (tmp_path / "maskrcnn_coco_stuff" / "stuff_m16").is_dir()  # class_set from the config.


@pytest.mark.slow
def test_unknown_category_stops_in_one_line_before_any_image(synthetic_root, tmp_path):
  root = tmp_path / "root"
  shutil.copytree(synthetic_root, root)
  path = root / "annotations" / "stuff_train2017.json"
  data = json.loads(path.read_text())
  data["annotations"][3]["category_id"] = 999
  path.write_text(json.dumps(data))
  for image in (root / "train2017").iterdir():
    image.write_bytes(b"not a JPEG")  # Counted as corrupt, were it decoded.
  result = subprocess.run(
      [sys.executable, "-m", "maskrcnn_jax.data.prepare", "--root", str(root),
       "--data_dir", str(tmp_path / "tfds")],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "3"})
  assert result.returncode == 1
  assert result.stderr.splitlines()[-1] == (
      f"Invalid data: {path}: unknown category_id in 1 of 29 annotations (ids 999; first "
      "annotation 10000003): not COCO-Stuff's, a wrong annotation file or class set")
  assert "Traceback" not in result.stderr and "cannot decode" not in result.stderr
  assert not (tmp_path / "tfds").exists()
