"""`--mode=eval` and `--mode=predict` on a checkpoint of the tiny config."""

import json
import pathlib

from PIL import Image

from configs import default
from configs import tiny
from maskrcnn_jax import run


def test_eval_and_predict_modes(tmp_path):
  config = tiny.get_config()
  config.data.root = str(tmp_path / "data")
  config.train.stages = [default.stage("all", "all", steps=1, lr=0.001)]
  workdir = tmp_path / "run"
  run.run(config, str(workdir), "train")
  assert not (workdir / "eval").exists()  # --mode=train does not evaluate.

  metrics = run.run(config, str(workdir), "eval")
  assert metrics["num_images"] == config.data.synthetic.num_val
  written = json.loads((workdir / "eval" / "1" / "metrics.json").read_text())
  assert written["step"] == 1 and "segm/AP" in written

  images = tmp_path / "images"
  images.mkdir()
  for i, path in enumerate(sorted((tmp_path / "data" / "val2017").glob("*.jpg"))[:3]):
    Image.open(path).convert("L").save(images / f"img{i}.png")  # Grayscale PNGs too.
  config.predict.input_dir = str(images)
  out = pathlib.Path(run.run(config, str(workdir), "predict"))
  assert sorted(p.name for p in out.glob("img*.png")) == ["img0.png", "img1.png", "img2.png"]
  assert Image.open(out / "img0.png").size[0] > 0
  assert isinstance(json.loads((out / "coco_results.json").read_text()), list)
