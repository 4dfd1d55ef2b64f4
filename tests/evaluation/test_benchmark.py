import os

from maskrcnn_jax.evaluation import benchmark


def test_benchmark_runs_on_a_few_images(tmp_path):
  times = benchmark.run(num_images=3, size=64, num_detections=3, batch_size=2,
                        class_set_name="stuff_no_other", out_dir=str(tmp_path),
                        num_pictures=0)
  assert set(times) == {"load", "add", "result", "write"}
  assert all(t >= 0 for t in times.values())
  assert os.path.exists(tmp_path / "eval" / "metrics.json")
