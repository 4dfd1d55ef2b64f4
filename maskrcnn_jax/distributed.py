"""Multi-process launch: the arguments of `jax.distributed.initialize`, from the environment.

jax 0.10.2 reads only `JAX_COORDINATOR_ADDRESS` and `JAX_LOCAL_DEVICE_IDS` itself, and under
Slurm and Open MPI it binds each process to the one GPU of its local rank. So every path but
the Cloud TPU one derives all four arguments here and passes them explicitly, with jax's
own cluster detection switched off. The launches, checked in this order:

| launch | recognised by | processes, id | local devices |
|---|---|---|---|
| manual | `JAX_NUM_PROCESSES` or `JAX_PROCESS_ID` | `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` | all, or `JAX_LOCAL_DEVICE_IDS` |
| Open MPI | `OMPI_COMM_WORLD_SIZE` > 1 | `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_RANK` | all when one rank per node, else `[OMPI_COMM_WORLD_LOCAL_RANK]` |
| Slurm (`srun`) | `SLURM_STEP_NODELIST`, more than one task | `SLURM_STEP_NUM_TASKS`, `SLURM_PROCID` | all when one task per node or one visible GPU, else `[SLURM_LOCALID]` |
| manual | `JAX_COORDINATOR_ADDRESS` alone | missing: an error naming `JAX_NUM_PROCESSES` | |
| Cloud TPU VM | jax's TPU check (libtpu and TPU chips) | jax's TPU cluster detection (metadata server) | all |
| none | none of the above | no `initialize`: one process | all |

Open MPI comes first, as in jax: `mpirun` inside an sbatch job starts its daemons with
`srun`, and the ranks inherit the daemons' `SLURM_STEP_*` values (one task per node).

Under a scheduler `JAX_COORDINATOR_ADDRESS` (or `JAX_COORDINATOR_PORT`) and
`JAX_LOCAL_DEVICE_IDS` override what is derived. A job that describes a cluster it cannot
join raises `ClusterError` with one line naming the variable; so does a host with TPU chips
where jax runs on the CPU (`check_backend`: no libtpu installed).
"""

import dataclasses
import os
import re
import signal
import sys
import threading
import time
from typing import Mapping

from absl import logging
import jax
from jax.experimental import multihost_utils

from maskrcnn_jax import hardware

EXIT_CANNOT_JOIN = 1  # As main.py's other one-line errors.
_GRACE_S = 10  # jax's own deadline for joining comes this long after the watchdog's.


class ClusterError(RuntimeError):
  """The environment describes a multi-process job that cannot be joined, or a host whose
  TPU chips jax cannot use."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """What `jax.distributed.initialize` gets; None fields are left to jax (TPU only)."""
  source: str  # manual | slurm | openmpi | tpu
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None  # None: every local device.
  variables: tuple[str, ...] = ()  # The environment variables the values come from.


def _int(env: Mapping[str, str], name: str, *, minimum: int = 0) -> int:
  value = env.get(name)
  if value is None or value == "":
    raise ClusterError(f"{name} is not set")
  if not re.fullmatch(r"\d+", value.strip()) or int(value) < minimum:
    raise ClusterError(f"{name}={value!r}: must be an integer >= {minimum}")
  return int(value)


def _address(value: str, name: str) -> str:
  if not re.fullmatch(r"(\[[0-9a-fA-F:.]+(%[\w.-]+)?\]|[^:\s\[\]]+):\d{1,5}", value):
    raise ClusterError(f"{name}={value!r}: must be HOST:PORT of process 0")
  return value


def _device_ids(env: Mapping[str, str]) -> tuple[int, ...] | None:
  value = env.get("JAX_LOCAL_DEVICE_IDS")
  if not value:
    return None
  if not re.fullmatch(r"\d+(,\d+)*", value.replace(" ", "")):
    raise ClusterError(f"JAX_LOCAL_DEVICE_IDS={value!r}: must be comma-separated device ids")
  return tuple(int(v) for v in value.replace(" ", "").split(","))


def _check_id(process_id: int, num_processes: int, id_name: str, count_name: str) -> None:
  if process_id >= num_processes:
    raise ClusterError(f"{id_name}={process_id}: must be < {count_name}={num_processes}")


def first_host(nodelist: str) -> str:
  """The first host of a Slurm node list: `node[003-007,9],gpu1` → `node003`."""
  m = re.match(r"([^,\[]+)(?:\[([^,\-\]]+))?", nodelist.strip())
  if not m:
    raise ClusterError(f"SLURM_STEP_NODELIST={nodelist!r}: no host name in it")
  return m.group(1) + (m.group(2) or "")


def tasks_on_node(tasks_per_node: str, node_id: int) -> int:
  """Slurm's compressed per-node task counts (`4(x2),2`) at node `node_id`."""
  counts = []
  for part in tasks_per_node.split(","):
    m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
    if not m:
      raise ClusterError(f"SLURM_STEP_TASKS_PER_NODE={tasks_per_node!r}: unreadable")
    counts += [int(m.group(1))] * int(m.group(2) or 1)
  if node_id >= len(counts):
    raise ClusterError(f"SLURM_NODEID={node_id}: the step has {len(counts)} nodes")
  return counts[node_id]


def _one_visible_gpu(env: Mapping[str, str]) -> bool:
  """The scheduler already bound this task to one GPU (e.g. `srun --gpus-per-task=1`)."""
  visible = env.get("CUDA_VISIBLE_DEVICES", env.get("ROCR_VISIBLE_DEVICES", ""))
  return bool(visible) and "," not in visible


def _local_ids(env, local_rank: int, local_tasks: int) -> tuple[int, ...] | None:
  """All local devices for one task per node; else this rank's GPU, unless already bound."""
  ids = _device_ids(env)
  if ids is not None:
    return ids
  if local_tasks == 1 or _one_visible_gpu(env):
    return None
  return (local_rank,)


def _manual(env: Mapping[str, str]) -> Launch:
  if not env.get("JAX_COORDINATOR_ADDRESS"):
    raise ClusterError("JAX_COORDINATOR_ADDRESS is not set: a manual launch needs "
                       "JAX_COORDINATOR_ADDRESS=HOST:PORT, JAX_NUM_PROCESSES and JAX_PROCESS_ID")
  address = _address(env["JAX_COORDINATOR_ADDRESS"], "JAX_COORDINATOR_ADDRESS")
  n = _int(env, "JAX_NUM_PROCESSES", minimum=1)
  pid = _int(env, "JAX_PROCESS_ID")
  _check_id(pid, n, "JAX_PROCESS_ID", "JAX_NUM_PROCESSES")
  return Launch("manual", address, n, pid, _device_ids(env),
                ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))


def _coordinator(env: Mapping[str, str], host: str, default_port: int) -> str:
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return _address(env["JAX_COORDINATOR_ADDRESS"], "JAX_COORDINATOR_ADDRESS")
  port = _int(env, "JAX_COORDINATOR_PORT") if env.get("JAX_COORDINATOR_PORT") else default_port
  return f"{host}:{port}"


def _job_port(job_id: int) -> int:
  """jax's choice: one port in 61440..65535 per job, the same on every node."""
  return job_id % 2**12 + (65535 - 2**12 + 1)


def _slurm(env: Mapping[str, str], n: int) -> Launch:
  pid = _int(env, "SLURM_PROCID")
  count = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
  _check_id(pid, n, "SLURM_PROCID", count)
  local_rank = _int(env, "SLURM_LOCALID")
  if env.get("SLURM_STEP_TASKS_PER_NODE"):
    local_tasks = tasks_on_node(env["SLURM_STEP_TASKS_PER_NODE"], _int(env, "SLURM_NODEID"))
  else:
    local_tasks = _int(env, "SLURM_NTASKS_PER_NODE", minimum=1)
  address = _coordinator(env, first_host(env["SLURM_STEP_NODELIST"]),
                         _job_port(_int(env, "SLURM_JOB_ID")))
  return Launch("slurm", address, n, pid, _local_ids(env, local_rank, local_tasks),
                ("SLURM_STEP_NODELIST", count, "SLURM_PROCID", "SLURM_LOCALID"))


def _openmpi(env: Mapping[str, str], n: int) -> Launch:
  pid = _int(env, "OMPI_COMM_WORLD_RANK")
  _check_id(pid, n, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")
  local_rank = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
  local_tasks = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", minimum=1)
  if env.get("JAX_COORDINATOR_ADDRESS"):
    address = _coordinator(env, "", 0)
  else:
    # Open MPI 4's mpirun publishes its own address and job id; Open MPI 5 (PMIx) does not.
    uri = env.get("OMPI_MCA_orte_hnp_uri", "")
    # `JOB.VPID;tcp://HOST[,HOST...]:PORT[;tcp6://[ADDR]:PORT]`: the first host, an IPv6
    # address in its brackets.
    m = re.match(r"(\d+)\.\d+;tcp6?://(\[[^\]\s]+\]|[^,:;\s]+)", uri)
    if not m:
      raise ClusterError(
          f"OMPI_MCA_orte_hnp_uri={uri!r} names no coordinator (Open MPI 5 sets none): "
          "set JAX_COORDINATOR_ADDRESS=HOST:PORT of rank 0's node")
    address = _coordinator(env, m.group(2), _job_port(int(m.group(1)) // 2**12))
  return Launch("openmpi", address, n, pid, _local_ids(env, local_rank, local_tasks),
                ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"))


def on_cloud_tpu_vm() -> bool:
  """jax's own check (libtpu installed and TPU chips present), made when jax is imported.

  jax keeps it in a private module: where another jax version moved it, False.
  """
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def detect(env: Mapping[str, str] | None = None) -> Launch | None:
  """The launch the environment describes, or None for a single process.

  Raises ClusterError (one line, naming the variable) for a job that describes a
  cluster with a missing or invalid value.
  """
  env = os.environ if env is None else env
  if any(env.get(k) for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")):
    return _manual(env)
  if env.get("OMPI_COMM_WORLD_SIZE"):  # Before Slurm: `mpirun` may run inside `srun`.
    n = _int(env, "OMPI_COMM_WORLD_SIZE", minimum=1)
    if n > 1:
      return _openmpi(env, n)
  if "SLURM_STEP_NODELIST" in env:  # Inside `srun`; a batch script alone is one process.
    count = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
    n = _int(env, count, minimum=1)
    if n > 1:
      return _slurm(env, n)
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return _manual(env)
  # A TPU VM that may not ask the metadata server (and names no workers) is one host.
  if on_cloud_tpu_vm() and (not env.get("TPU_SKIP_MDS_QUERY") or any(
      env.get(k) for k in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"))):
    return Launch("tpu")
  return None


def check_backend(env: Mapping[str, str] | None = None, *, root: str = "/") -> None:
  """ClusterError where TPU chips are present but jax runs on the CPU (no libtpu).

  Each worker of a TPU slice would otherwise train alone on its CPU. `JAX_PLATFORMS=cpu`
  asks for the CPU. Starts jax's backends: call after `initialize`.
  """
  env = os.environ if env is None else env
  if jax.default_backend() != "cpu" or hardware.requested_platforms(env) == ("cpu",):
    return
  chips = hardware.tpu_chips(root)
  if chips:
    raise ClusterError(
        f"{chips} TPU chips on this host, but jax runs on the CPU: libtpu is missing. "
        "Install it with pip install 'jax[tpu]==0.10.2' (or set JAX_PLATFORMS=cpu)")


def initialize(launch: Launch | None, *, timeout_s: int = 300) -> None:
  """Joins the job `launch` describes (no-op for None); ClusterError if it cannot.

  Must run before anything touches a jax backend.
  """
  if launch is None:
    return
  # CPU-only jobs take jax's cross-process collectives: gloo by default, or the user's
  # choice (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi).
  jax.config.update("jax_enable_preemption_service", True)  # reached_preemption_sync_point.
  if launch.source == "tpu":
    kwargs = {}  # jax reads the pod from the TPU metadata server.
  else:
    kwargs = dict(coordinator_address=launch.coordinator_address,
                  num_processes=launch.num_processes, process_id=launch.process_id,
                  local_device_ids=(None if launch.local_device_ids is None
                                    else list(launch.local_device_ids)),
                  cluster_detection_method="deactivate")
  logging.info("Joining a %s job: %s", launch.source,
               {k: v for k, v in kwargs.items() if k != "cluster_detection_method"})
  # jax aborts the process (a C++ fatal error and a stack trace) when the coordinator
  # cannot be reached in time; this watchdog ends it first, with one line.
  watchdog = threading.Timer(timeout_s, _give_up, (describe_failure(launch, timeout_s),))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s + _GRACE_S, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    raise ClusterError(f"{describe_failure(launch, timeout_s)}: {_first_line(e)}") from e
  finally:
    watchdog.cancel()


def _give_up(message: str) -> None:
  sys.stderr.write(f"Cannot join the cluster: {message}\n")
  sys.stderr.flush()
  os._exit(EXIT_CANNOT_JOIN)  # pylint: disable=protected-access


def _first_line(error: Exception) -> str:
  return next((line.strip() for line in str(error).splitlines() if line.strip()),
              type(error).__name__)


def _client():
  """The coordination service's client (jax 0.10.2 has no public handle on it)."""
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  return jax_distributed.global_state.client


def publish(key: str, value: str) -> None:
  """Sets `key` on the coordination service, for `wait_for` in the other processes."""
  _client().key_value_set(key, value, allow_overwrite=True)


def wait_for(key: str, *, what: str, timeout_s: float, log_every_s: float = 60) -> str:
  """The value another process `publish`es under `key`: waited for on the coordination
  service, not in a device collective (whose timeout a long wait may hit), with a log line
  every `log_every_s`. TimeoutError after `timeout_s`."""
  start = time.monotonic()
  while True:
    left = timeout_s - (time.monotonic() - start)
    if left <= 0:
      raise TimeoutError(f"process {jax.process_index()}: waited {timeout_s:.0f} s for {what}")
    try:
      return _client().blocking_key_value_get(key, max(1, int(min(left, log_every_s) * 1000)))
    except jax.errors.JaxRuntimeError as e:
      if "DEADLINE_EXCEEDED" not in str(e):
        raise
    logging.info("Process %d: waiting for %s (%.1f min)", jax.process_index(), what,
                 (time.monotonic() - start) / 60)


def describe_failure(launch: Launch, timeout_s: int) -> str:
  """One line: which job, from which variables, could not be joined."""
  if launch.source == "tpu":
    return f"could not join the Cloud TPU pod (jax's metadata detection) within {timeout_s} s"
  return (f"process {launch.process_id} of {launch.num_processes} could not join the "
          f"{launch.source} job at {launch.coordinator_address} within {timeout_s} s "
          f"(from {', '.join(launch.variables)})")


class Preemption:
  """SIGTERM → stop at the same check in every process, from start-up to the last step.

  Every process makes the same sequence of `check()` calls: at start-up's phase boundaries,
  then once per step. One process: a SIGTERM handler sets a flag, read at each check.
  Several: jax's preemption service, started by `jax.distributed.initialize` with its own
  SIGTERM handler, tells the other processes and makes the check after the fastest
  process's latest one the sync point (`reached_preemption_sync_point`): no cross-host
  collective per check. The service's counter is the number of checks, not the step: a
  notice before any check makes check 1 the sync point, which a run resumed at step S
  passes too (step S + 1 would not be 1).

  Enter it before `initialize` (main.py): a SIGTERM that arrives before the join is held
  here and handed to the service once it listens (`joined`).
  """

  def __init__(self):
    self.requested = False
    self._checks = 0
    self._previous = None

  def __enter__(self):
    # Once joined, SIGTERM is the service's: a Python handler would hide the notice.
    if not jax.distributed.is_initialized() and (
        threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: stopping at the next check (a checkpoint if steps were taken).")
    self.requested = True

  def joined(self) -> None:
    """Call after `initialize`: a SIGTERM held since start-up goes to jax's service."""
    if self.requested and jax.distributed.is_initialized():
      self.requested = False  # The service's sync point decides from now on.
      os.kill(os.getpid(), signal.SIGTERM)

  def check(self) -> bool:
    """True from the sync point on; call at the same points in every process."""
    self._checks += 1
    if not jax.distributed.is_initialized():
      return self.requested
    if not self.requested and multihost_utils.reached_preemption_sync_point(self._checks):
      logging.warning("Preemption notice: stopping at check %d.", self._checks)
      self.requested = True
    return self.requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
