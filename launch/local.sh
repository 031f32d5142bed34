#!/usr/bin/env bash
# Runs N processes of one command on this machine as one multi-process JAX job.
# See usage() below, or: launch/local.sh --help
set -euo pipefail

readonly PROG="launch/local.sh"
# Bounds past anything one machine runs: each process is a JAX runtime (a few
# hundred MB) with a connection to every other.
readonly MAX_PROCESSES=256
readonly MAX_DEVICES_PER_PROCESS=1024

usage() {
  cat <<'EOF'
Usage: launch/local.sh --num_processes=N [--devices_per_process=D] [--port=P]
                       [--log_dir=DIR] [--dry_run] -- COMMAND [ARG...]

Runs N copies of COMMAND on this machine as one multi-process JAX job on CPU
(a test bed for the multi-host code paths). Process i gets:

  JAX_PLATFORMS=cpu  JAX_NUM_CPU_DEVICES=D  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
  JAX_COORDINATOR_ADDRESS=127.0.0.1:P  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
  PYTHONUNBUFFERED=1

A `python -m diffusion_lm.main ...` command gets --multihost appended when it
has none (so it calls jax.distributed.initialize()); other commands run as
given.

Flags:
  --num_processes=N        processes to start (required, 1..256)
  --devices_per_process=D  CPU devices per process (default 1; at most 1024)
  --port=P                 coordinator port on 127.0.0.1 (default: a free one)
  --log_dir=DIR            write process i's output to DIR/process_<i>.log and
                           show only process 0's on the terminal (default:
                           every process's output on the terminal, each line
                           prefixed with [i])
  --dry_run                print each process's command with its environment
                           instead of running it
  -h, --help               this text

Waits for all processes. When one fails, the others are stopped (SIGTERM,
then SIGKILL after 5 s) and local.sh exits with the failing process's status.

Example (2 processes of 4 devices each = one 8-device mesh):

  launch/local.sh --num_processes=2 --devices_per_process=4 -- \
      python -m diffusion_lm.main --config=configs/quickstart.py --workdir=runs/mh
EOF
}

die() {
  echo "${PROG}: error: $*" >&2
  exit 2
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

prefix_lines() {  # Copies stdin to stdout line by line, each line prefixed by $1.
  local line
  while IFS= read -r line || [[ -n ${line} ]]; do
    printf '%s%s\n' "$1" "${line}"
  done
}

free_port() {
  local python
  python="$(command -v python3 || command -v python || true)"
  [[ -n ${python} ]] || die "no python3 to pick a free port; pass --port=P"
  "${python}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

num_processes=""
devices_per_process=1
port=""
log_dir=""
dry_run=0
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --num_processes=*) num_processes="${1#*=}" ;;
    --devices_per_process=*) devices_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --log_dir=*) log_dir="${1#*=}" ;;
    --dry_run) dry_run=1 ;;
    --num_processes | --devices_per_process | --port | --log_dir)
      die "$1 needs a value: $1=VALUE" ;;
    --) shift; break ;;
    *) die "unknown flag '$1' (see --help; the command goes after --)" ;;
  esac
  shift
done

[[ -n ${num_processes} ]] || die "--num_processes=N is required"
int_in_range "${num_processes}" "${MAX_PROCESSES}" ||
  die "--num_processes must be a positive integer up to ${MAX_PROCESSES}, got '${num_processes}'"
int_in_range "${devices_per_process}" "${MAX_DEVICES_PER_PROCESS}" ||
  die "--devices_per_process must be a positive integer up to ${MAX_DEVICES_PER_PROCESS}, got '${devices_per_process}'"
[[ -z ${port} ]] || int_in_range "${port}" 65535 || die "--port must be in 1..65535, got '${port}'"
(($#)) || die "no command: put it after --, e.g. $PROG --num_processes=2 -- python -c 'print(1)'"

with_multihost "$@"
[[ -n ${port} ]] || port="$(free_port)"

process_env() {  # The environment of process $1, as NAME=VALUE words.
  ENV=(JAX_PLATFORMS=cpu "JAX_NUM_CPU_DEVICES=${devices_per_process}"
       JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
       "JAX_COORDINATOR_ADDRESS=127.0.0.1:${port}"
       "JAX_NUM_PROCESSES=${num_processes}" "JAX_PROCESS_ID=$1"
       PYTHONUNBUFFERED=1)
}

if ((dry_run)); then
  for ((i = 0; i < num_processes; i++)); do
    process_env "${i}"
    quote_words "${ENV[@]}" "${COMMAND[@]}"
  done
  exit 0
fi

if [[ -n ${log_dir} ]]; then
  mkdir -p "${log_dir}" || die "cannot create --log_dir=${log_dir}"
fi

# Each process runs in its own process group (set -m), so that stopping one
# stops everything it started, including the prefixing pipe.
set -m
pids=()
stop_all() {  # Stops every process group still alive: SIGTERM, then SIGKILL.
  local pid alive waited=0
  set +m  # No "Terminated" job notices.
  for pid in "${pids[@]}"; do
    kill -TERM -- "-${pid}" 2>/dev/null || true
  done
  while ((waited < 50)); do
    alive=0
    for pid in "${pids[@]}"; do
      kill -0 "${pid}" 2>/dev/null && alive=1
    done
    ((alive)) || return 0
    sleep 0.1
    waited=$((waited + 1))
  done
  disown -a  # No "Killed" job notices.
  for pid in "${pids[@]}"; do
    kill -KILL -- "-${pid}" 2>/dev/null || true
  done
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

for ((i = 0; i < num_processes; i++)); do
  process_env "${i}"
  (
    set +e
    trap : TERM  # Outlive the command, so that stop_all sees when it is gone.
    exec 2>/dev/null  # This shell's own notices ("Terminated"), not the command's.
    export "${ENV[@]}"
    if [[ -z ${log_dir} ]]; then
      "${COMMAND[@]}" 2>&1 | prefix_lines "[${i}] "
      exit "${PIPESTATUS[0]}"
    elif ((i == 0)); then
      "${COMMAND[@]}" 2>&1 | tee "${log_dir}/process_${i}.log" | prefix_lines "[${i}] "
      exit "${PIPESTATUS[0]}"
    else
      exec "${COMMAND[@]}" >"${log_dir}/process_${i}.log" 2>&1
    fi
  ) </dev/null &
  pids+=("$!")
done

echo "${PROG}: ${num_processes} processes x ${devices_per_process} CPU devices, coordinator 127.0.0.1:${port}" >&2
remaining=${num_processes}
declare -a done_flags
while ((remaining > 0)); do
  for ((i = 0; i < num_processes; i++)); do
    [[ -z ${done_flags[i]:-} ]] || continue
    kill -0 "${pids[i]}" 2>/dev/null && continue
    status=0
    wait "${pids[i]}" || status=$?
    done_flags[i]=1
    remaining=$((remaining - 1))
    if ((status != 0)); then
      where=""
      [[ -z ${log_dir} ]] || where=" (log: ${log_dir}/process_${i}.log)"
      echo "${PROG}: process ${i} exited with status ${status}${where}; stopping the others" >&2
      stop_all
      exit "${status}"
    fi
  done
  ((remaining == 0)) || sleep 0.1
done
echo "${PROG}: all ${num_processes} processes finished" >&2
