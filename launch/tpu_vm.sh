#!/usr/bin/env bash
# Creates a Cloud TPU VM (or queued resource), installs this repository on
# every worker, runs one command on every worker and deletes the VM.
# See usage() below, or: launch/tpu_vm.sh --help
set -euo pipefail

readonly PROG="launch/tpu_vm.sh"
readonly REMOTE_REPO="diffusion_lm"        # On each worker, relative to $HOME.
readonly REMOTE_VENV="diffusion_lm_venv"   # Likewise.
readonly REMOTE_LOGS="diffusion_lm_logs"   # Likewise: run.log, run.pid, run.rc.
readonly STILL_RUNNING=75                  # Exit status of `logs` while the run goes on.

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh [STEP] --name=NAME --zone=ZONE [FLAGS] [-- COMMAND ...]

STEP (default: up):
  up      create + setup + run COMMAND (when given) [+ delete: --delete_after]
  create  create the TPU VM (--queued: a queued resource, waited for until
          ACTIVE)
  setup   copy this repository (or clone --repo_url) to every worker and
          pip install -e ".[tpu]" into ~/diffusion_lm_venv (Python >= 3.11;
          apt-get installs python3.11 when the image has no such Python)
  run     start COMMAND on every worker (detached, in ~/diffusion_lm, output
          in ~/diffusion_lm_logs/run.log) and stream worker 0's log until it
          ends; exits with its status [+ delete: --delete_after]
  logs    stream the run's log again (--worker=N, default 0); Ctrl-C stops
          only the streaming, never the run
  stop    SIGTERM the run on every worker (training saves a checkpoint and
          exits 143)
  delete  delete the TPU VM (with --queued: the queued resource and its VM);
          --delete is the same

FLAGS:
  --name=NAME           TPU VM (and queued resource) name (required)
  --zone=ZONE           e.g. us-east5-a (required)
  --project=PROJECT     default: gcloud's configured project
  --accelerator=TYPE    e.g. v5p-32, v6e-16, v5litepod-8, v4-32 (create, up)
  --version=RUNTIME     TPU software version; default from the accelerator:
                        v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
                        v5litepod v2-alpha-tpuv5-lite, else tpu-ubuntu2204-base
  --spot | --reserved   spot capacity, or a reservation (default: on-demand)
  --queued              create and delete through a queued resource
  --repo_url=URL        setup: git clone URL on every worker instead of
                        copying this checkout; --ref=REF (branch, tag or
                        commit) checks out REF (default: the remote's HEAD)
  --worker=N            logs: which worker's log (default 0)
  --delete_after        up, run: delete the VM once COMMAND has finished,
                        whatever its status (not when the log streaming was
                        cut off while it may still run)
  --dry_run             print each command (gcloud ones as they would be run,
                        one per line, ready to paste) instead of running it
  -h, --help            this text

COMMAND runs from the repository's root in the venv, on every worker; a
`python -m diffusion_lm.main ...` command gets --multihost appended when it has
none. Use a gs:// workdir: every worker writes there.

Examples:
  launch/tpu_vm.sh --name=text8 --zone=us-east5-a --accelerator=v5p-32 --spot \
      --delete_after -- python -m diffusion_lm.main --config=configs/text8.py \
      --workdir=gs://BUCKET/runs/text8 --config.data.data_dir=/mnt/tfds
  launch/tpu_vm.sh setup --name=text8 --zone=us-east5-a    # after a code change
  launch/tpu_vm.sh run --name=text8 --zone=us-east5-a -- python -m ...
  launch/tpu_vm.sh delete --name=text8 --zone=us-east5-a
EOF
}

die() {
  echo "${PROG}: error: $*" >&2
  exit 2
}

note() {
  echo "${PROG}: $*" >&2
}

# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------------------
# Worker side: `bash launch/tpu_vm.sh _setup|_start|_logs|_stop` runs on each
# TPU worker (through gcloud ... ssh) from the copied repository.
# ---------------------------------------------------------------------------

worker_setup() {
  cd "$(dirname "$0")/.."
  local py="" candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "${candidate}" >/dev/null 2>&1 && "${candidate}" -c \
        'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      py="${candidate}"
      break
    fi
  done
  if [[ -z ${py} ]]; then
    echo "No Python >= 3.11 with venv here: installing python3.11 with apt-get." >&2
    sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq update
    sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq install -y \
        python3.11 python3.11-venv
    py=python3.11
  fi
  [[ -x "${HOME}/${REMOTE_VENV}/bin/python" ]] || "${py}" -m venv "${HOME}/${REMOTE_VENV}"
  "${HOME}/${REMOTE_VENV}/bin/python" -m pip install -q --upgrade pip
  "${HOME}/${REMOTE_VENV}/bin/python" -m pip install -q -e ".[tpu]"
  echo "$(hostname): $("${HOME}/${REMOTE_VENV}/bin/python" -c \
      'import sys, jax; print("python", sys.version.split()[0], "jax", jax.__version__)')"
}

worker_start() {  # Starts "$@" detached; its output in run.log, its status in run.rc.
  local logs="${HOME}/${REMOTE_LOGS}"
  mkdir -p "${logs}"
  if [[ -f ${logs}/run.pid ]] && kill -0 "$(cat "${logs}/run.pid")" 2>/dev/null; then
    echo "$(hostname): a run is still going (pid $(cat "${logs}/run.pid")); stop it first" >&2
    exit 1
  fi
  rm -f "${logs}/run.rc"
  # setsid: its own process group, for `stop`; the `trap :` keeps the wrapper
  # alive through SIGTERM so that it records the command's status.
  # shellcheck disable=SC2016  # Expanded by the wrapper's shell.
  nohup setsid bash -c 'trap : TERM; "$@"; echo $? > "'"${logs}"'/run.rc.tmp"; mv "'"${logs}"'/run.rc.tmp" "'"${logs}"'/run.rc"' \
      run "$@" >"${logs}/run.log" 2>&1 </dev/null &
  echo $! >"${logs}/run.pid"
  echo "$(hostname): started pid $! in $(pwd)"
}

worker_logs() {  # Streams run.log until the run ends; exits with its status.
  local logs="${HOME}/${REMOTE_LOGS}"
  [[ -f ${logs}/run.pid ]] || { echo "$(hostname): no run started here" >&2; exit 1; }
  tail -n +1 -F --pid="$(cat "${logs}/run.pid")" "${logs}/run.log" 2>/dev/null || true
  if [[ -f ${logs}/run.rc ]]; then
    local rc
    rc="$(cat "${logs}/run.rc")"
    echo "$(hostname): the run exited with status ${rc}" >&2
    exit "${rc}"
  fi
  echo "$(hostname): the run is still going" >&2
  exit "${STILL_RUNNING}"
}

worker_stop() {
  local logs="${HOME}/${REMOTE_LOGS}" pid
  if [[ -f ${logs}/run.pid ]] && pid="$(cat "${logs}/run.pid")" && kill -0 "${pid}" 2>/dev/null; then
    kill -TERM -- "-${pid}"
    echo "$(hostname): sent SIGTERM to the run (pid ${pid})"
  else
    echo "$(hostname): no run going"
  fi
}

case "${1:-}" in
  _setup) worker_setup; exit 0 ;;
  _start) shift; [[ ${1:-} == "--" ]] && shift; worker_start "$@"; exit 0 ;;
  _logs) worker_logs ;;
  _stop) worker_stop; exit 0 ;;
esac

# ---------------------------------------------------------------------------
# Local side.
# ---------------------------------------------------------------------------

step=up
case "${1:-}" in
  up | create | setup | run | logs | stop | delete) step="$1"; shift ;;
esac

name="" zone="" project="" accelerator="" version="" repo_url="" ref="" worker=0
spot=0 reserved=0 queued=0 delete_after=0 delete_flag=0 dry_run=0
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --repo_url=*) repo_url="${1#*=}" ;;
    --ref=*) ref="${1#*=}" ;;
    --worker=*) worker="${1#*=}" ;;
    --spot) spot=1 ;;
    --reserved) reserved=1 ;;
    --queued) queued=1 ;;
    --delete) delete_flag=1 ;;
    --delete_after) delete_after=1 ;;
    --dry_run) dry_run=1 ;;
    --name | --zone | --project | --accelerator | --version | --repo_url | --ref | --worker)
      die "$1 needs a value: $1=VALUE" ;;
    --) shift; break ;;
    up | create | setup | run | logs | stop | delete)
      die "the step '$1' must come first: ${PROG} $1 --name=... (see --help)" ;;
    *) die "unknown flag '$1' (see --help; the command goes after --)" ;;
  esac
  shift
done

if ((delete_flag)); then
  [[ ${step} == up || ${step} == delete ]] || die "--delete is the 'delete' step; it cannot go with '${step}'"
  step=delete
fi
[[ -n ${name} ]] || die "--name=NAME is required"
[[ -n ${zone} ]] || die "--zone=ZONE is required"
[[ ${name} =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name='${name}': use lowercase letters, digits and hyphens, starting with a letter"
((spot && reserved)) && die "--spot and --reserved exclude each other"
[[ ${worker} =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got '${worker}'"
if [[ ${step} == up || ${step} == create ]]; then
  [[ -n ${accelerator} ]] || die "--accelerator=TYPE is required to create a TPU VM (e.g. v5p-32)"
  [[ ${accelerator} =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
    die "--accelerator='${accelerator}' is not a TPU type like v5p-32 or v6e-16"
fi
case "${step}" in
  up | run) ;;
  *) (($# == 0)) || die "'${step}' takes no command after --" ;;
esac
[[ ${step} != run ]] || (($#)) || die "no command: ${PROG} run --name=... --zone=... -- python -m diffusion_lm.main ..."
if ((delete_after)) && [[ ${step} != up && ${step} != run ]]; then
  die "--delete_after goes with 'up' or 'run'"
fi
if ((delete_after)) && (($# == 0)); then
  die "--delete_after needs a command after --"
fi
if ((!dry_run)) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found: install the Google Cloud CLI (or use --dry_run)"
fi

if [[ -z ${version} && -n ${accelerator} ]]; then
  case "${accelerator}" in
    v6e-*) version=v2-alpha-tpuv6e ;;
    v5p-*) version=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) version=v2-alpha-tpuv5-lite ;;
    *) version=tpu-ubuntu2204-base ;;
  esac
fi

GLOBAL=(--zone="${zone}")
[[ -z ${project} ]] || GLOBAL+=(--project="${project}")

run_cmd() {  # Runs "$@", or prints it with --dry_run.
  if ((dry_run)); then
    quote_words "$@"
  else
    "$@"
  fi
}

retry() {  # Runs "$@" up to 3 times (SSH to new workers can fail at first).
  local attempt
  for attempt in 1 2 3; do
    if run_cmd "$@"; then
      return 0
    fi
    ((attempt == 3)) || { note "attempt ${attempt} failed; retrying in 30 s"; sleep 30; }
  done
  return 1
}

ssh_all() {  # Runs the shell command $1 on every worker.
  gcloud_ssh --worker=all "$1"
}

gcloud_ssh() {  # gcloud_ssh --worker=W COMMAND
  run_cmd gcloud compute tpus tpu-vm ssh "${name}" "${GLOBAL[@]}" "$1" --quiet --command="$2"
}

do_create() {
  local capacity=()
  ((spot)) && capacity=(--spot)
  ((reserved)) && capacity=(--reserved)
  if ((queued)); then
    run_cmd gcloud compute tpus queued-resources create "${name}" --node-id="${name}" \
        "${GLOBAL[@]}" --accelerator-type="${accelerator}" --runtime-version="${version}" \
        ${capacity[@]+"${capacity[@]}"}
    note "waiting for queued resource ${name} to become ACTIVE"
    local describe=(gcloud compute tpus queued-resources describe "${name}" "${GLOBAL[@]}"
                    --format='value(state.state)')
    if ((dry_run)); then
      quote_words "${describe[@]}"
      return
    fi
    local state
    while true; do
      state="$("${describe[@]}")"
      case "${state}" in
        ACTIVE) note "${name} is ACTIVE"; return ;;
        FAILED | SUSPENDED | SUSPENDING | DELETING)
          die "queued resource ${name} is ${state}: see gcloud compute tpus queued-resources describe ${name} --zone=${zone}" ;;
      esac
      note "${name}: ${state:-unknown}; checking again in 60 s"
      sleep 60
    done
  else
    run_cmd gcloud compute tpus tpu-vm create "${name}" "${GLOBAL[@]}" \
        --accelerator-type="${accelerator}" --version="${version}" \
        ${capacity[@]+"${capacity[@]}"}
  fi
}

pack_repository() {  # Writes this checkout (git: tracked and untracked, not ignored) to $1.
  local repo
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  if git -C "${repo}" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "${repo}" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' file; do
        [[ -e ${repo}/${file} ]] && printf '%s\0' "${file}"
      done | tar -C "${repo}" --null -T - -czf "$1"
  else
    tar -C "${repo}" --exclude=.git --exclude=runs --exclude='*.egg-info' \
        --exclude=__pycache__ -czf "$1" .
  fi
}

do_setup() {
  if [[ -n ${repo_url} ]]; then
    retry gcloud compute tpus tpu-vm ssh "${name}" "${GLOBAL[@]}" --worker=all --quiet \
        --command="{ [ -d ${REMOTE_REPO}/.git ] || git clone -q $(quote "${repo_url}") ${REMOTE_REPO}; } && git -C ${REMOTE_REPO} fetch -q origin $(quote "${ref:-HEAD}") && git -C ${REMOTE_REPO} checkout -q --detach FETCH_HEAD && bash ${REMOTE_REPO}/launch/tpu_vm.sh _setup"
  else
    local tarball="${TMPDIR:-/tmp}/diffusion_lm-${name}.tar.gz"
    if ((dry_run)); then
      echo "# pack this checkout (git ls-files: tracked and untracked, not ignored) into ${tarball}"
    else
      pack_repository "${tarball}"
    fi
    retry gcloud compute tpus tpu-vm scp "${tarball}" "${name}:${REMOTE_REPO}.tar.gz" \
        "${GLOBAL[@]}" --worker=all --quiet
    ((dry_run)) || rm -f "${tarball}"
    retry gcloud compute tpus tpu-vm ssh "${name}" "${GLOBAL[@]}" --worker=all --quiet \
        --command="mkdir -p ${REMOTE_REPO} && tar -xzf ${REMOTE_REPO}.tar.gz -C ${REMOTE_REPO} && bash ${REMOTE_REPO}/launch/tpu_vm.sh _setup"
  fi
}

do_logs() {  # Streams worker $1's log; returns the run's status.
  local status=0
  gcloud_ssh --worker="$1" "bash ${REMOTE_REPO}/launch/tpu_vm.sh _logs" || status=$?
  return "${status}"
}

do_delete() {
  if ((queued)); then
    run_cmd gcloud compute tpus queued-resources delete "${name}" "${GLOBAL[@]}" --force --quiet
  else
    run_cmd gcloud compute tpus tpu-vm delete "${name}" "${GLOBAL[@]}" --quiet
  fi
}

do_run() {
  with_multihost "$@"
  ssh_all ". ${REMOTE_VENV}/bin/activate && cd ${REMOTE_REPO} && bash launch/tpu_vm.sh _start -- $(quote_words "${COMMAND[@]}")"
  local status=0
  do_logs 0 || status=$?
  ((dry_run)) && status=0
  if ((status == STILL_RUNNING || status == 255)); then
    note "lost worker 0's log while the run may still be going (status ${status}); the VM is kept."
    note "reattach: ${PROG} logs --name=${name} --zone=${zone}${project:+ --project=${project}}"
    return "${status}"
  fi
  ((status == 0)) || note "the run exited with status ${status} (worker 0)"
  if ((delete_after)); then
    do_delete
  fi
  return "${status}"
}

case "${step}" in
  create) do_create ;;
  setup) do_setup ;;
  run) do_run "$@" ;;
  logs) do_logs "${worker}" ;;
  stop) ssh_all "bash ${REMOTE_REPO}/launch/tpu_vm.sh _stop" ;;
  delete) do_delete ;;
  up)
    do_create
    do_setup
    if (($#)); then
      do_run "$@"
    else
      note "no command given: the VM is ready; next: ${PROG} run --name=${name} --zone=${zone} -- COMMAND"
    fi
    ;;
esac
