"""The GKE manifest of docs/pods.md: valid YAML, the exit-code policy, overrides the config
has."""

import pathlib

import pytest

from configs import default
from maskrcnn_jax import validation

yaml = pytest.importorskip("yaml")

MANIFEST = pathlib.Path(__file__).resolve().parents[1] / "docs/gke/jobset_tpu.yaml"


def test_jobset_fails_on_divergence_and_restarts_otherwise():
  jobset = yaml.safe_load(MANIFEST.read_text())
  policy = jobset["spec"]["failurePolicy"]
  assert policy["maxRestarts"] > 0
  assert policy["rules"] == [{"name": "diverged", "action": "FailJobSet",
                              "onJobFailureReasons": ["PodFailurePolicy"]}]
  [job] = jobset["spec"]["replicatedJobs"]
  spec = job["template"]["spec"]
  assert spec["backoffLimit"] == 0  # Any other exit (143) fails the Job: JobSet restarts.
  [rule] = spec["podFailurePolicy"]["rules"]
  assert rule == {"action": "FailJob",
                  "onExitCodes": {"containerName": "train", "operator": "In", "values": [3]}}
  pod = spec["template"]["spec"]
  [container] = pod["containers"]
  assert pod["restartPolicy"] == "Never" and container["name"] == "train"
  assert container["resources"]["limits"]["google.com/tpu"] * spec["parallelism"] == 16
  config = default.get_config()
  overrides = [a for a in container["command"] if a.startswith("--config.")]
  assert overrides
  assert all(validation.override_error(config, a) is None for a in overrides)
