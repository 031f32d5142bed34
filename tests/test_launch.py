"""launch/: the TPU VM, SLURM and local multi-process launchers.

The TPU and SLURM scripts are checked through their dry runs (the commands
they would run, parsed back with shlex) and through fake `gcloud` and `srun`
executables that run the remote half on this machine; local.sh really starts
processes, one test a 2-process jax.distributed reduction.
"""

import importlib.util
import json
import os
import pathlib
import shlex
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = str(REPO / "launch" / "tpu_vm.sh")
SLURM = str(REPO / "launch" / "gpu_slurm.sbatch")
LOCAL = str(REPO / "launch" / "local.sh")

TRAIN = ["python", "-m", "diffusion_lm.main", "--config=configs/text8.py",
         "--workdir=gs://bucket/runs/text8", "--config.train.steps=10",
         "--config.data.files=/data/my files/*.txt", "--config.model.name=it's"]


def clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_", "SLURM_", "SRUN_", "XLA_"))}
  env.update(extra)
  return env


def bash(script, *args, env=None, timeout=60):
  return subprocess.run(["bash", script, *args], env=env or clean_env(),
                        capture_output=True, text=True, timeout=timeout, cwd=REPO)


def commands(stdout):
  """The printed commands, each split into words; comment lines left out."""
  return [shlex.split(line) for line in stdout.splitlines()
          if line.strip() and not line.startswith("#")]


def flag(words, name):
  values = [w.split("=", 1)[1] for w in words if w.startswith(name + "=")]
  assert len(values) == 1, (name, words)
  return values[0]


def gcloud(cmds, *verb):
  """The printed gcloud commands that start with `gcloud *verb`."""
  n = len(verb) + 1
  return [c for c in cmds if c[:n] == ["gcloud", *verb]]


def remote_words(ssh_words):
  return shlex.split(flag(ssh_words, "--command"))


def assert_one_error_line(result, prog):
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
  assert result.stdout == ""


# ----------------------------------------------------------------- tpu_vm.sh


def test_tpu_up_dry_run_direct_spot():
  # Catches: a missing or reordered step, --spot dropped, install/run on one
  # worker only, the user's flags re-quoted or lost, no --multihost.
  result = bash(TPU, "--name=run1", "--zone=us-east5-a", "--accelerator=v5p-32",
                "--spot", "--delete_after", "--dry_run", "--", *TRAIN)
  assert result.returncode == 0, result.stderr
  cmds = commands(result.stdout)
  assert all(c[0] == "gcloud" for c in cmds), cmds
  assert [c[4] for c in cmds] == ["create", "scp", "ssh", "ssh", "ssh", "delete"]
  create, scp, install, start, logs, delete = cmds
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "run1"]
  assert flag(create, "--accelerator-type") == "v5p-32"
  assert flag(create, "--version") == "v2-alpha-tpuv5"
  assert flag(create, "--zone") == "us-east5-a"
  assert "--spot" in create and "--reserved" not in create
  assert not gcloud(cmds, "compute", "tpus", "queued-resources")
  assert flag(scp, "--worker") == "all" and scp[6] == "run1:diffusion_lm.tar.gz"
  assert flag(install, "--worker") == "all"
  assert remote_words(install)[-3:] == ["bash", "diffusion_lm/launch/tpu_vm.sh", "_setup"]
  assert flag(start, "--worker") == "all"
  words = remote_words(start)
  user = words[words.index("--") + 1:]
  assert user == TRAIN + ["--multihost"]
  assert flag(logs, "--worker") == "0"
  assert remote_words(logs) == ["bash", "diffusion_lm/launch/tpu_vm.sh", "_logs"]
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "run1"]
  assert "--quiet" in delete


def test_tpu_queued_reserved_project_and_repo_url():
  # Catches: --queued creating a plain VM, no wait for ACTIVE, --project or
  # --reserved dropped, --repo_url ignored in favour of copying the checkout.
  result = bash(TPU, "up", "--dry_run", "--name=q1", "--zone=europe-west4-a",
                "--accelerator=v6e-16", "--queued", "--reserved", "--project=proj",
                "--repo_url=https://github.com/me/diffusion_lm.git", "--ref=v1.0",
                "--", *TRAIN)
  assert result.returncode == 0, result.stderr
  cmds = commands(result.stdout)
  create = gcloud(cmds, "compute", "tpus", "queued-resources", "create")
  assert len(create) == 1 and create[0][5] == "q1"
  assert flag(create[0], "--node-id") == "q1"
  assert flag(create[0], "--runtime-version") == "v2-alpha-tpuv6e"
  assert flag(create[0], "--accelerator-type") == "v6e-16"
  assert "--reserved" in create[0] and "--spot" not in create[0]
  assert not gcloud(cmds, "compute", "tpus", "tpu-vm", "create")
  assert gcloud(cmds, "compute", "tpus", "queued-resources", "describe")
  assert all(flag(c, "--project") == "proj" for c in cmds)
  assert not gcloud(cmds, "compute", "tpus", "tpu-vm", "scp")
  install = gcloud(cmds, "compute", "tpus", "tpu-vm", "ssh")[0]
  assert flag(install, "--worker") == "all"
  remote = flag(install, "--command")
  assert "git clone -q https://github.com/me/diffusion_lm.git diffusion_lm" in remote
  assert "fetch -q origin v1.0" in remote and remote.endswith("tpu_vm.sh _setup")
  # No --delete_after: nothing deleted.
  assert not gcloud(cmds, "compute", "tpus", "queued-resources", "delete")
  assert not gcloud(cmds, "compute", "tpus", "tpu-vm", "delete")


@pytest.mark.parametrize("args, expected", [
    (["delete", "--queued"], ["queued-resources", "delete", "x", "--zone=z", "--force", "--quiet"]),
    (["--delete"], ["tpu-vm", "delete", "x", "--zone=z", "--quiet"]),
    (["stop"], ["tpu-vm", "ssh", "x", "--zone=z", "--worker=all", "--quiet",
                "--command=bash diffusion_lm/launch/tpu_vm.sh _stop"]),
    (["logs", "--worker=3"], ["tpu-vm", "ssh", "x", "--zone=z", "--worker=3", "--quiet",
                              "--command=bash diffusion_lm/launch/tpu_vm.sh _logs"]),
])
def test_tpu_single_step_dry_runs(args, expected):
  # Catches: delete of the wrong resource kind (a queued resource left
  # behind, billing), a prompt that blocks --quiet runs, stop/logs on the
  # wrong workers.
  result = bash(TPU, *args, "--name=x", "--zone=z", "--dry_run")
  assert result.returncode == 0, result.stderr
  assert commands(result.stdout) == [["gcloud", "compute", "tpus", *expected]]


@pytest.mark.parametrize("command", [
    ["python", "-m", "diffusion_lm.main", "--multihost", "--workdir=gs://b"],
    ["python", "-m", "diffusion_lm.prepare", "--config=configs/text8.py"],
])
def test_tpu_run_multihost_only_once_and_only_for_main(command):
  # Catches: --multihost added twice (absl error) or added to a module that
  # does not define it (data preparation on every worker).
  result = bash(TPU, "run", "--name=x", "--zone=z", "--dry_run", "--", *command)
  assert result.returncode == 0, result.stderr
  words = remote_words(commands(result.stdout)[0])
  assert words[words.index("--") + 1:] == command


@pytest.mark.parametrize("args, message", [
    (["--zone=z", "--accelerator=v5p-32"], "--name=NAME is required"),
    (["--name=x", "--accelerator=v5p-32"], "--zone=ZONE is required"),
    (["--name=x", "--zone=z"], "--accelerator=TYPE is required"),
    (["--name=x", "--zone=z", "--accelerator=v5p"], "is not a TPU type"),
    (["--name=X_1", "--zone=z", "--accelerator=v5p-32"], "lowercase"),
    (["--name=x", "--zone=z", "--accelerator=v5p-32", "--spot", "--reserved"], "exclude"),
    (["--name=x", "--zone", "z"], "--zone needs a value"),
    (["--name=x", "--zone=z", "--accelerator=v5p-32", "--preemptible"], "unknown flag '--preemptible'"),
    (["run", "--name=x", "--zone=z"], "no command"),
    (["delete", "--name=x", "--zone=z", "--", "python"], "takes no command"),
    (["setup", "--name=x", "--zone=z", "--delete_after"], "--delete_after goes with"),
    (["--name=x", "--zone=z", "run"], "must come first"),
])
def test_tpu_bad_flags_one_clear_line(args, message):
  # Catches: a typo that silently creates (and bills) the wrong VM, or an
  # error buried in a traceback or gcloud's output.
  result = bash(TPU, *args, "--dry_run")
  assert_one_error_line(result, "launch/tpu_vm.sh")
  assert message in result.stderr


def test_tpu_help():
  # Catches: --help that runs something, or fails under `set -u`.
  result = bash(TPU, "--help")
  assert result.returncode == 0 and "--queued" in result.stdout and "--dry_run" in result.stdout


FAKE_GCLOUD = r'''#!/usr/bin/env python3
"""Records each call; runs `ssh --command` here (the worker's $HOME is FAKE_HOME)."""
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
  f.write(json.dumps(args) + "\n")
if "scp" in args:
  shutil.copy(args[4], os.path.join(os.environ["FAKE_HOME"], "uploaded.tar.gz"))
elif "ssh" in args:
  command = next(a for a in args if a.startswith("--command="))[len("--command="):]
  if "_setup" in command:
    sys.exit(0)
  if "_logs" in command and os.environ.get("FAKE_LOGS_STATUS"):
    sys.exit(int(os.environ["FAKE_LOGS_STATUS"]))
  env = dict(os.environ, HOME=os.environ["FAKE_HOME"])
  sys.exit(subprocess.run(["bash", "-c", command], cwd=env["HOME"], env=env).returncode)
'''


@pytest.fixture()
def fake_gcloud(tmp_path):
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  bin_dir.mkdir()
  (home / "diffusion_lm_venv" / "bin").mkdir(parents=True)
  (home / "diffusion_lm_venv" / "bin" / "activate").write_text("")
  (home / "diffusion_lm").symlink_to(REPO)  # The "copied" repository.
  gcloud_path = bin_dir / "gcloud"
  gcloud_path.write_text(FAKE_GCLOUD)
  gcloud_path.chmod(0o755)
  calls = tmp_path / "calls.jsonl"
  env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_HOME=str(home),
                  FAKE_CALLS=str(calls), TMPDIR=str(tmp_path))

  def read_calls():
    return [json.loads(line) for line in calls.read_text().splitlines()]
  return env, home, read_calls


@pytest.mark.parametrize("exit_code", [0, 3])
@pytest.mark.slow
def test_tpu_run_streams_worker_log_and_deletes_after(fake_gcloud, exit_code):
  # Catches: the run's exit status lost on the way back (a failed run that
  # looks fine), output not streamed, --delete_after skipped or done before
  # the run ends, the command's words changed on the worker.
  env, home, read_calls = fake_gcloud
  command = ["python", "-c",
             "import sys; print('worker says', sys.argv[1:], flush=True); "
             f"sys.exit({exit_code})", "a b", "it's"]
  result = bash(TPU, "run", "--name=x", "--zone=z", "--delete_after", "--", *command, env=env)
  assert result.returncode == exit_code, result.stderr
  assert "worker says ['a b', \"it's\"]" in result.stdout
  assert (home / "diffusion_lm_logs" / "run.rc").read_text().strip() == str(exit_code)
  verbs = [call[3] for call in read_calls()]
  assert verbs == ["ssh", "ssh", "delete"]


@pytest.mark.parametrize("stream_status", [255, 75])
def test_tpu_run_keeps_vm_when_log_stream_is_cut(fake_gcloud, stream_status):
  # Catches: --delete_after deleting the VM under a run that is still going
  # because only the log streaming failed (ssh dropped: 255; still running: 75).
  env, home, read_calls = fake_gcloud
  env["FAKE_LOGS_STATUS"] = str(stream_status)
  result = bash(TPU, "run", "--name=x", "--zone=z", "--delete_after", "--", "true", env=env)
  assert result.returncode == stream_status, result.stderr
  assert "the VM is kept" in result.stderr and "logs --name=x --zone=z" in result.stderr
  assert [call[3] for call in read_calls()] == ["ssh", "ssh"]


def test_tpu_setup_uploads_this_checkout(fake_gcloud):
  # Catches: an upload missing the package or this script (the workers then
  # cannot install or run), or one carrying ignored run outputs.
  env, home, read_calls = fake_gcloud
  result = bash(TPU, "setup", "--name=x", "--zone=z", env=env)
  assert result.returncode == 0, result.stderr
  names = subprocess.run(["tar", "-tzf", str(home / "uploaded.tar.gz")], check=True,
                         capture_output=True, text=True).stdout.split()
  names = {n.removeprefix("./") for n in names}
  assert {"setup.py", "launch/tpu_vm.sh", "diffusion_lm/main.py"} <= names
  assert not any(n.startswith(("runs/", ".git/")) or "__pycache__" in n for n in names)
  calls = read_calls()
  assert [c[3] for c in calls] == ["scp", "ssh"]
  assert all("--worker=all" in c for c in calls)


@pytest.mark.slow
def test_tpu_worker_stop_checkpoints_and_records_status(tmp_path):
  # Catches: `stop` killing only the wrapper (training never sees SIGTERM, no
  # checkpoint) or the wrapper dying with it (status 143 never recorded).
  env = clean_env(HOME=str(tmp_path))
  trainer = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: (print('saved checkpoint'), sys.exit(143)))\n"
             "print('training', flush=True)\n"
             "time.sleep(60)\n")
  started = bash(TPU, "_start", "--", sys.executable, "-c", trainer, env=env)
  assert started.returncode == 0, started.stderr
  log = tmp_path / "diffusion_lm_logs" / "run.log"
  deadline = time.time() + 20
  while "training" not in log.read_text() and time.time() < deadline:
    time.sleep(0.05)
  again = bash(TPU, "_start", "--", "true", env=env)
  assert again.returncode != 0 and "still going" in again.stderr
  assert bash(TPU, "_stop", env=env).returncode == 0
  streamed = bash(TPU, "_logs", env=env)
  assert streamed.returncode == 143, streamed.stderr
  assert "saved checkpoint" in streamed.stdout


# ----------------------------------------------------------- gpu_slurm.sbatch

SLURM_ENV = dict(SLURM_JOB_ID="1234567", SLURM_JOB_NODELIST="gpu-a[003-004,007],io1",
                 SLURM_NTASKS="24", SLURM_NNODES="3", SLURM_NTASKS_PER_NODE="8",
                 SLURM_GPUS_ON_NODE="8", SLURM_CPUS_PER_TASK="12")


def test_slurm_dry_run():
  # Catches: a wrong coordinator host or port (processes never meet), the
  # process count taken from nodes instead of tasks, flags re-quoted or
  # lost, no --multihost, srun's lost --cpus-per-task (Slurm >= 22.05).
  result = bash(SLURM, *TRAIN, env=clean_env(DRY_RUN="1", **SLURM_ENV))
  assert result.returncode == 0, result.stderr
  exports, cpus, srun = commands(result.stdout)
  port = 1234567 % 4096 + 61440
  assert exports == ["export", f"JAX_COORDINATOR_ADDRESS=gpu-a003:{port}",
                     "JAX_NUM_PROCESSES=24"]
  assert cpus == ["export", "SRUN_CPUS_PER_TASK=12"]
  assert srun[0] == "srun" and "--kill-on-bad-exit=1" in srun
  assert srun[srun.index("diffusion_lm_task") + 1:] == TRAIN + ["--multihost"]


@pytest.mark.parametrize("nodelist, first", [
    ("node001", "node001"), ("node[001-015],host2", "node001"),
    ("a-b[7,9-11]", "a-b7"), ("n1,n2", "n1"), ("gpu[12]", "gpu12"),
])
def test_slurm_coordinator_is_first_node(nodelist, first):
  # Catches: a mis-parsed SLURM node list (JAX_COORDINATOR_ADDRESS naming a
  # host that does not exist).
  env = clean_env(DRY_RUN="1", **dict(SLURM_ENV, SLURM_JOB_NODELIST=nodelist,
                                      SLURM_JOB_ID="5"), JAX_COORDINATOR_PORT="8476")
  env["PATH"] = "/usr/bin:/bin"  # No scontrol: the script's own parser.
  result = bash(SLURM, "true", env=env)
  assert result.returncode == 0, result.stderr
  assert commands(result.stdout)[0][1] == f"JAX_COORDINATOR_ADDRESS={first}:8476"


FAKE_SRUN = r'''#!/usr/bin/env bash
# Runs the task command once per task, as srun would, one at a time.
while [[ $1 == -* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % 2)) CUDA_VISIBLE_DEVICES=${FAKE_VISIBLE:-0,1} "$@" || exit
done
'''


@pytest.mark.parametrize("visible, local_ids", [("0,1", ["0", "1", "0", "1"]),
                                                ("3", ["0", "0", "0", "0"])])
def test_slurm_tasks_get_their_own_ids(tmp_path, visible, local_ids):
  # Catches: JAX_PROCESS_ID expanded once on the batch node (every task
  # process 0), and a GPU index past the one GPU SLURM shows a bound task.
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text(FAKE_SRUN)
  (bin_dir / "srun").chmod(0o755)
  out = tmp_path / "tasks.jsonl"
  record = ("import json, os, sys; f = open(sys.argv[1], 'a'); "
            "f.write(json.dumps([os.environ[k] for k in ('JAX_PROCESS_ID', "
            "'JAX_NUM_PROCESSES', 'JAX_COORDINATOR_ADDRESS', 'JAX_LOCAL_DEVICE_IDS')]"
            " + sys.argv[2:]) + '\\n')")
  env = clean_env(**dict(SLURM_ENV, SLURM_NTASKS="4", SLURM_JOB_NODELIST="n[1-2]",
                         SLURM_NTASKS_PER_NODE="2", SLURM_GPUS_ON_NODE="2"),
                  FAKE_VISIBLE=visible, PATH=f"{bin_dir}:{os.environ['PATH']}")
  result = bash(SLURM, sys.executable, "-c", record, str(out), "a b", "$HOME", env=env)
  assert result.returncode == 0, result.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  port = 1234567 % 4096 + 61440
  assert rows == [[str(i), "4", f"n1:{port}", local_ids[i], "a b", "$HOME"]
                  for i in range(4)]


@pytest.mark.parametrize("env, args, message", [
    ({}, TRAIN, "SLURM_JOB_ID is not set"),
    (dict(SLURM_ENV, SLURM_NTASKS_PER_NODE="4"), TRAIN, "--ntasks-per-node=4 but 8 GPUs"),
    (SLURM_ENV, [], "no command"),
    (dict(SLURM_ENV, JAX_COORDINATOR_PORT="18446744073709551617"), TRAIN,
     "JAX_COORDINATOR_PORT must be in 1..65535, got '18446744073709551617'"),
])
def test_slurm_errors_one_clear_line(env, args, message):
  # Catches: a job that starts the wrong number of processes per node, a
  # script run outside sbatch that hangs instead of saying why, or a port
  # past 2^64 that bash's arithmetic wraps into range.
  result = bash(SLURM, *args, env=clean_env(DRY_RUN="1", **env))
  assert_one_error_line(result, "gpu_slurm.sbatch")
  assert message in result.stderr


# ------------------------------------------------------------------ local.sh


def test_local_dry_run_env():
  # Catches: a process id, count, port or device count missing from the
  # environment, gloo not selected, or --multihost appended twice.
  result = bash(LOCAL, "--num_processes=2", "--devices_per_process=4", "--port=12345",
                "--dry_run", "--", *TRAIN, "--multihost")
  assert result.returncode == 0, result.stderr
  cmds = commands(result.stdout)
  assert len(cmds) == 2
  for i, words in enumerate(cmds):
    env = dict(w.split("=", 1) for w in words[:7])
    assert env == {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4",
                   "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
                   "JAX_COORDINATOR_ADDRESS": "127.0.0.1:12345",
                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
                   "PYTHONUNBUFFERED": "1"}
    assert words[7:] == TRAIN + ["--multihost"]


def test_local_runs_every_process(tmp_path):
  # Catches: processes not started, started with the same id, output not
  # labelled, or local.sh returning before they finish.
  script = ("import os, pathlib, sys, time; time.sleep(0.2); "
            "pathlib.Path(sys.argv[1], os.environ['JAX_PROCESS_ID']).write_text("
            "os.environ['JAX_NUM_PROCESSES'] + ' ' + os.environ['JAX_COORDINATOR_ADDRESS']); "
            "print('hello from', os.environ['JAX_PROCESS_ID'])")
  result = bash(LOCAL, "--num_processes=2", "--", sys.executable, "-c", script, str(tmp_path))
  assert result.returncode == 0, result.stderr
  values = {p.name: p.read_text() for p in tmp_path.iterdir()}
  assert set(values) == {"0", "1"}
  assert values["0"] == values["1"] and values["0"].startswith("2 127.0.0.1:")
  assert "[0] hello from 0" in result.stdout and "[1] hello from 1" in result.stdout


def test_local_failure_stops_the_others(tmp_path):
  # Catches: a failed process reported as success, or the survivors left
  # running (in a real job they hang in a collective until a timeout).
  script = ("import os, pathlib, sys, time\n"
            "i = os.environ['JAX_PROCESS_ID']\n"
            "pathlib.Path(sys.argv[1], i).write_text(str(os.getpid()))\n"
            "if i == '1':\n"
            "  time.sleep(0.5); print('failing'); sys.exit(3)\n"
            "time.sleep(60)\n")
  start = time.time()
  result = bash(LOCAL, "--num_processes=2", f"--log_dir={tmp_path / 'logs'}", "--",
                sys.executable, "-c", script, str(tmp_path))
  assert result.returncode == 3, result.stderr
  assert time.time() - start < 20
  assert "process 1 exited with status 3" in result.stderr
  assert "failing" in (tmp_path / "logs" / "process_1.log").read_text()
  survivor = int((tmp_path / "0").read_text())
  time.sleep(0.2)
  with pytest.raises(ProcessLookupError):
    os.kill(survivor, 0)


@pytest.mark.parametrize("args, message", [
    (["--", "true"], "--num_processes=N is required"),
    (["--num_processes=0", "--", "true"], "positive integer"),
    (["--num_processes=2", "--devices_per_process=x", "--", "true"], "positive integer"),
    (["--num_processes=2", "--port=70000", "--", "true"], "1..65535"),
    (["--num_processes=2", "--port=18446744073709551617", "--", "true"],
     "--port must be in 1..65535, got '18446744073709551617'"),
    (["--num_processes=99999999999999999999", "--dry_run", "--", "true"],
     "--num_processes must be a positive integer up to 256, got "
     "'99999999999999999999'"),
    (["--num_processes=257", "--", "true"], "positive integer up to 256"),
    (["--num_processes=2", "--devices_per_process=1025", "--", "true"],
     "--devices_per_process must be a positive integer up to 1024"),
    (["--num_processes=2", "--nodes=2", "--", "true"], "unknown flag '--nodes=2'"),
    (["--num_processes=2"], "no command"),
    (["--num_processes=2", "true"], "unknown flag 'true'"),
])
def test_local_bad_flags_one_clear_line(args, message):
  # Catches: a typo that starts a wrong-sized job, an error hidden in a
  # Python traceback from every process, or a number past 2^63 that bash's
  # arithmetic wraps (a port of 2^64 + 1 taken for 1, a process count that
  # never ends, even in a dry run).
  result = bash(LOCAL, *args, timeout=10)
  assert_one_error_line(result, "launch/local.sh")
  assert message in result.stderr


JAX_PSUM = textwrap.dedent("""
    import os
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    local = np.full((jax.local_device_count(),), jax.process_index() + 1.0, np.float32)
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("d")), local)
    psum = jax.jit(jax.shard_map(lambda a: jax.lax.psum(a, "d"), mesh=mesh,
                                 in_specs=P("d"), out_specs=P()))
    total = psum(x)
    print("RESULT", jax.process_index(), jax.process_count(), jax.local_device_count(),
          jax.device_count(), float(total.addressable_data(0)[0]))
    jax.distributed.shutdown()
""")


@pytest.mark.slow
def test_local_jax_distributed_psum():
  # Catches: an environment that does not make one job (a missing or wrong
  # JAX_* variable, CPU collectives not set to gloo): the processes would
  # hang, fail, or each reduce only its own devices.
  result = bash(LOCAL, "--num_processes=2", "--devices_per_process=2", "--",
                sys.executable, "-c", JAX_PSUM, timeout=120)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  lines = sorted(line.split("RESULT ", 1)[1] for line in result.stdout.splitlines()
                 if "RESULT" in line)
  # 2 devices of process 0 hold 1, 2 of process 1 hold 2: 1+1+2+2 = 6.
  assert lines == ["0 2 2 4 6.0", "1 2 2 4 6.0"]


# ------------------------------------------------- the recipes' own commands


def documented_commands(recipe: str) -> list[list[str]]:
  """The launch/ commands in a recipe's docstring, each as words."""
  spec = importlib.util.spec_from_file_location("recipe", REPO / recipe)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  text = module.__doc__.replace("\\\n", " ")
  return [shlex.split(line) for line in text.splitlines()
          if "launch/" in line and line.lstrip().startswith(("launch/", "sbatch"))]


@pytest.mark.parametrize("recipe", ["configs/text8.py", "configs/lm1b.py",
                                    "configs/owt.py"])
def test_recipe_docstring_commands_dry_run_as_documented(recipe):
  # Catches: a recipe's launch command that the scripts reject (a renamed
  # flag), or that would train another config or without --multihost.
  tpu, slurm = documented_commands(recipe)
  assert tpu[0] == "launch/tpu_vm.sh" and slurm[0] == "sbatch"
  split = tpu.index("--")
  command = tpu[split + 1:]
  result = bash(TPU, *tpu[1:split], "--dry_run", *tpu[split:])
  assert result.returncode == 0, result.stderr
  runs = [c for c in gcloud(commands(result.stdout), "compute", "tpus",
                            "tpu-vm", "ssh")
          if "diffusion_lm.main" in flag(c, "--command")]
  assert len(runs) == 1 and flag(runs[0], "--worker") == "all"
  remote = remote_words(runs[0])
  assert remote[remote.index("--") + 1:] == command + ["--multihost"]
  script = slurm.index("launch/gpu_slurm.sbatch")
  result = bash(SLURM, *slurm[script + 1:],
                env=clean_env(DRY_RUN="1", **SLURM_ENV))
  assert result.returncode == 0, result.stderr
  srun = commands(result.stdout)[-1]
  assert srun[srun.index("diffusion_lm_task") + 1:] == (
      slurm[script + 1:] + ["--multihost"])
