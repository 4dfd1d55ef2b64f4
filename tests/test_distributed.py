"""Launch paths: the arguments of jax.distributed.initialize from fake environments, and
real localhost jobs through the manual path (join, an unreachable coordinator, preemption)."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import types

import pytest

from maskrcnn_jax import distributed

_ON_CLOUD_TPU_VM = distributed.on_cloud_tpu_vm  # The real check; tests see a stub.
WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")
ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def not_on_tpu(monkeypatch):
  monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: False)


def slurm_env(**extra):
  """`srun` of 2 nodes × 4 tasks (one per GPU), this task: node 1, local rank 2."""
  env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_NTASKS": "8",
         "SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "6", "SLURM_LOCALID": "2",
         "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
  return {**env, **extra}


def ompi_env(**extra):
  env = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3",
         "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
         "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911"}
  return {**env, **extra}


def test_single_host_is_no_launch():
  assert distributed.detect({}) is None
  assert distributed.detect({"HOME": "/root", "CUDA_VISIBLE_DEVICES": "0,1"}) is None
  # A Slurm batch script (no step) or a one-task step, and a single MPI rank: one process.
  assert distributed.detect({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "16"}) is None
  assert distributed.detect(slurm_env(SLURM_STEP_NUM_TASKS="1", SLURM_PROCID="0")) is None
  assert distributed.detect({"OMPI_COMM_WORLD_SIZE": "1"}) is None


def test_tpu_leaves_the_pod_to_jax(monkeypatch):
  monkeypatch.setattr(distributed, "on_cloud_tpu_vm", lambda: True)
  assert distributed.detect({}) == distributed.Launch("tpu")
  assert distributed.detect({"TPU_WORKER_HOSTNAMES": "t0,t1", "TPU_SKIP_MDS_QUERY": "1"}) \
      == distributed.Launch("tpu")  # GKE: the workers come from the environment.
  assert distributed.detect({"TPU_SKIP_MDS_QUERY": "1"}) is None  # A TPU VM without pod.
  # A scheduler's variables win over the TPU check.
  assert distributed.detect(slurm_env()).source == "slurm"


def test_manual_passes_everything():
  launch = distributed.detect({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                               "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
  assert (launch.source, launch.coordinator_address, launch.num_processes,
          launch.process_id, launch.local_device_ids) == ("manual", "10.0.0.1:1234", 2, 1, None)
  launch = distributed.detect({"JAX_COORDINATOR_ADDRESS": "[fe80::1]:99",
                               "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "0",
                               "JAX_LOCAL_DEVICE_IDS": "2,3"})
  assert launch.coordinator_address == "[fe80::1]:99" and launch.local_device_ids == (2, 3)


def test_slurm_one_task_per_gpu():
  launch = distributed.detect(slurm_env())
  assert launch == distributed.Launch(
      "slurm", "gpu017:" + str(4242 % 4096 + 61440), 8, 6, (2,),
      ("SLURM_STEP_NODELIST", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID"))
  # Already bound to its GPU by Slurm (--gpus-per-task=1): every visible device.
  assert distributed.detect(slurm_env(CUDA_VISIBLE_DEVICES="2")).local_device_ids is None


def test_slurm_one_task_per_node_uses_all_gpus():
  env = slurm_env(SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_PROCID="1",
                  SLURM_LOCALID="0", SLURM_STEP_TASKS_PER_NODE="1(x2)",
                  CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")
  launch = distributed.detect(env)
  assert (launch.num_processes, launch.process_id, launch.local_device_ids) == (2, 1, None)


def test_slurm_overrides():
  env = slurm_env(JAX_COORDINATOR_PORT="5555", JAX_LOCAL_DEVICE_IDS="4,5")
  launch = distributed.detect(env)
  assert launch.coordinator_address == "gpu017:5555" and launch.local_device_ids == (4, 5)
  assert distributed.detect(slurm_env(JAX_COORDINATOR_ADDRESS="head:7")).coordinator_address \
      == "head:7"


@pytest.mark.parametrize("nodelist, host", [
    ("node001", "node001"), ("node001,host2", "node001"), ("node[001-0015],host2", "node001"),
    ("node[007,009-015]", "node007"), ("a-b[3]", "a-b3")])
def test_first_host(nodelist, host):
  assert distributed.first_host(nodelist) == host


def test_tasks_on_node():
  assert [distributed.tasks_on_node("4(x2),2,1(x3)", i) for i in range(6)] == [4, 4, 2, 1, 1, 1]


def test_openmpi_two_ranks_per_node():
  launch = distributed.detect(ompi_env())
  port = 1531576320 // 4096 % 4096 + 61440
  assert (launch.source, launch.coordinator_address, launch.num_processes, launch.process_id,
          launch.local_device_ids) == ("openmpi", f"10.96.0.1:{port}", 4, 3, (1,))


def test_openmpi_ipv6_coordinator():
  env = ompi_env(OMPI_MCA_orte_hnp_uri="1531576320.0;tcp6://[fe80::1:2]:34911")
  port = 1531576320 // 4096 % 4096 + 61440
  assert distributed.detect(env).coordinator_address == f"[fe80::1:2]:{port}"


def test_openmpi_inside_slurm_is_open_mpi():
  """`mpirun` in a 3-node sbatch job: its daemons on the other 2 nodes run in an `srun`
  step, and the ranks there inherit that step (2 tasks, one id per node)."""
  env = {**slurm_env(SLURM_STEP_NODELIST="gpu[018-019]", SLURM_STEP_NUM_TASKS="2",
                     SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                     SLURM_STEP_TASKS_PER_NODE="1(x2)"), **ompi_env()}
  launch = distributed.detect(env)
  assert (launch.source, launch.num_processes, launch.process_id) == ("openmpi", 4, 3)


def test_openmpi_one_rank_per_node_uses_all_gpus():
  env = ompi_env(OMPI_COMM_WORLD_LOCAL_SIZE="1", OMPI_COMM_WORLD_LOCAL_RANK="0")
  assert distributed.detect(env).local_device_ids is None


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, "JAX_NUM_PROCESSES is not set"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS is not set"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "JAX_COORDINATOR_ADDRESS='10.0.0.1': must be HOST:PORT"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two': must be an integer >= 1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2: must be < JAX_NUM_PROCESSES=2"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0",
      "JAX_LOCAL_DEVICE_IDS": "0;1"}, "JAX_LOCAL_DEVICE_IDS='0;1'"),
    (slurm_env(SLURM_PROCID=None), "SLURM_PROCID is not set"),
    (slurm_env(SLURM_PROCID="9"), "SLURM_PROCID=9: must be < SLURM_STEP_NUM_TASKS=8"),
    (ompi_env(OMPI_MCA_orte_hnp_uri=None), "set JAX_COORDINATOR_ADDRESS"),
])
def test_a_cluster_that_cannot_be_joined_names_the_variable(env, message):
  env = {k: v for k, v in env.items() if v is not None}
  with pytest.raises(distributed.ClusterError) as e:
    distributed.detect(env)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_tpu_check_without_jax_private_module(monkeypatch):
  monkeypatch.setitem(sys.modules, "jax._src.cloud_tpu_init", None)  # Import fails.
  assert _ON_CLOUD_TPU_VM() is False
  monkeypatch.setitem(sys.modules, "jax._src.cloud_tpu_init", types.ModuleType("moved"))
  assert _ON_CLOUD_TPU_VM() is False


def pci_device(root, name, vendor, device):
  path = root / "sys/bus/pci/devices" / name
  path.mkdir(parents=True)
  (path / "vendor").write_text(vendor + "\n")
  (path / "device").write_text(device + "\n")


def test_tpu_chips_without_libtpu_stop_in_one_line(tmp_path, monkeypatch):
  pci_device(tmp_path, "0000:00:04.0", "0x1ae0", "0x0042")  # gVNIC: Google, not a TPU.
  distributed.check_backend({}, root=str(tmp_path))
  for i in range(4):
    pci_device(tmp_path, f"0000:00:0{5 + i}.0", "0x1ae0", "0x005e")  # v4 chips.
  with pytest.raises(distributed.ClusterError) as e:
    distributed.check_backend({}, root=str(tmp_path))
  assert str(e.value).startswith("4 TPU chips on this host, but jax runs on the CPU")
  assert "jax[tpu]==0.10.2" in str(e.value) and "\n" not in str(e.value)
  distributed.check_backend({"JAX_PLATFORMS": "cpu"}, root=str(tmp_path))  # Asked for.
  monkeypatch.setattr(distributed.jax, "default_backend", lambda: "tpu")
  distributed.check_backend({}, root=str(tmp_path))


def test_gpu_host_is_not_a_tpu_host(tmp_path, monkeypatch):
  pci_device(tmp_path, "0000:01:00.0", "0x10de", "0x2330")  # An NVIDIA H100.
  distributed.check_backend({}, root=str(tmp_path))
  monkeypatch.setattr(distributed.jax, "default_backend", lambda: "gpu")
  distributed.check_backend({}, root=str(tmp_path))


def test_initialize_keeps_the_users_collectives(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize",
                      lambda **kwargs: calls.append(kwargs))
  before = (distributed.jax.config.jax_cpu_collectives_implementation,
            distributed.jax.config.jax_enable_preemption_service)
  try:
    distributed.jax.config.update("jax_cpu_collectives_implementation", "mpi")
    distributed.initialize(distributed.detect(ompi_env()), timeout_s=5)
    assert distributed.jax.config.jax_cpu_collectives_implementation == "mpi"
  finally:
    distributed.jax.config.update("jax_cpu_collectives_implementation", before[0])
    distributed.jax.config.update("jax_enable_preemption_service", before[1])
  assert calls[0]["num_processes"] == 4 and calls[0]["process_id"] == 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(mode: str, num_processes: int, *, timeout_s: int = 120, port: int | None = None,
            ids=None, env=None):
  """The README's manual launch on localhost: one process per id, 2 CPU devices each."""
  port = port or _free_port()
  procs = []
  for i in (range(num_processes) if ids is None else ids):
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
           "JAX_NUM_PROCESSES": str(num_processes), "JAX_PROCESS_ID": str(i)}
    procs.append(subprocess.Popen([sys.executable, str(WORKER), mode], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE))
  results = []
  for p in procs:
    out, err = p.communicate(timeout=timeout_s)
    results.append((p.returncode, out, err))
  return results


@pytest.mark.slow  # Two processes.
@pytest.mark.parametrize("mode", ["preempt", "preempt_before_join"])
def test_two_processes_join_and_agree_on_preemption(mode):
  results = _launch(mode, 2)
  outs = []
  for rc, out, err in results:
    assert rc == 0, err[-2000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  assert [o["process_index"] for o in outs] == [0, 1]
  assert all(o["process_count"] == 2 and o["device_count"] == 4 for o in outs)
  # Process 1 alone got SIGTERM, at check 3 or before the join; both stop at the same check
  # (a SIGTERM before the join reaches the service, not only process 1's handler).
  assert outs[0]["stopped_at"] == outs[1]["stopped_at"] > (3 if mode == "preempt" else 0)


@pytest.mark.slow  # Two processes.
def test_other_processes_wait_for_the_data_build_on_the_coordination_service(tmp_path):
  results = _launch("prepare", 2, env={"MASKRCNN_JAX_TEST_DATA": str(tmp_path)})
  outs = []
  for rc, out, err in results:
    assert rc == 0, err[-2000:]
    outs.append(json.loads(out.strip().splitlines()[-1]))
  assert [o["train_examples"] for o in outs] == [4, 4]
  # Through process 0's 2 s, each process logged a line each 0.5 s.
  assert results[0][2].count("Process 0: building the data of") >= 2, results[0][2][-2000:]
  assert results[1][2].count("Process 1: waiting for process 0's data build") >= 2, \
      results[1][2][-2000:]
  error = f"{tmp_path}/bad/annotations/stuff_train2017.json: unknown category_id in 1 of "
  assert outs[0]["error"].startswith(error)
  assert outs[1]["error"].startswith(f"the data build on process 0 failed: {error}")


def test_unreachable_coordinator_fails_in_one_line(monkeypatch):
  monkeypatch.setenv("MASKRCNN_JAX_TEST_JOIN_TIMEOUT", "3")
  [(rc, out, err)] = _launch("join", 2, ids=[1])  # Process 0 never starts.
  assert rc == distributed.EXIT_CANNOT_JOIN and not out
  lines = [l for l in err.splitlines() if l.startswith("Cannot join")]
  assert lines == [lines[0]] and "process 1 of 2 could not join the manual job" in lines[0]
  assert "JAX_COORDINATOR_ADDRESS" in lines[0] and "Check failure" not in err
