#!/usr/bin/env bash
# SLURM launcher for GPU clusters: writes a batch script that runs one training process per node
# (each seeing all of its node's GPUs) and submits it with sbatch. `--dry-run` prints the commands
# (including the whole batch script) instead of running them. Run with --help for the details.
set -euo pipefail

PROG=slurm_gpu.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: launch/slurm_gpu.sh --nodes N --config PATH[:ARG] --workdir DIR [OPTIONS] [--config.KEY=VALUE ...]

Writes RUN_DIR/JOB.sbatch and submits it: `srun --ntasks-per-node=1` starts one process per node,
each sees all GPUs of its node, and every process runs
    python -m rlvlm_jax.train --config PATH --workdir DIR --distributed --config.KEY=VALUE ...
(--distributed: jax.distributed.initialize() reads the SLURM job's environment).
Run it on a login node, from a checkout on a filesystem every compute node mounts.

Job
  --nodes N             nodes (= training processes)                              (required)
  --gpus-per-node G     GPUs per node (default: 8)
  --cpus-per-task C     CPU cores for each node's process (default: 8 per GPU)
  --mem MEM             memory per node, e.g. 400G, or 0 for all of it (default: the cluster's)
  --partition P         SLURM partition
  --account A           SLURM account to charge
  --time T              time limit, e.g. 24:00:00 or 2-00:00:00
  --job-name NAME       job name (default: rlvlm)
  --exclusive           take whole nodes
  --sbatch-arg ARG      any other #SBATCH option, repeatable, e.g. --sbatch-arg=--qos=high

Training
  --config PATH[:ARG]   experiment config, relative to the repository               (required)
  --workdir DIR         an ABSOLUTE path on a filesystem every node mounts, or gs://...  (required)
  --config.KEY=VALUE    passed to training as they are (e.g. --config.ppo.iterations=100)

Environment
  --repo-dir DIR        the checkout the nodes run (default: this one)
  --venv DIR            virtual environment with the CUDA jax (default: REPO_DIR/.venv; BUILD.md)
  --mem-fraction F      XLA_PYTHON_CLIENT_MEM_FRACTION, GPU memory JAX takes (default: 0.90)
  --env KEY=VALUE       extra environment for the job, repeatable (e.g. NCCL_SOCKET_IFNAME=ib0)
  --run-dir DIR         where the batch script and the job logs go (default: REPO_DIR/runs/slurm)

  --dry-run             print the commands (the batch script as a heredoc), write/submit nothing
  -h, --help            this text

Example:
  launch/slurm_gpu.sh --nodes 2 --gpus-per-node 8 --partition gpu --time 12:00:00 \
      --config experiments/llava_mistral_7b_numberline.py --workdir /shared/runs/nl7b \
      --config.model.checkpoint=/shared/llava-sft-hf
EOF
}

parse_args() {
    NODES="" GPUS=8 CPUS="" MEM="" PARTITION="" ACCOUNT="" TIME="" JOB_NAME=rlvlm EXCLUSIVE=0
    CONFIG="" WORKDIR="" REPO_DIR=$REPO_ROOT VENV="" MEM_FRACTION=0.90 RUN_DIR=""
    SBATCH_ARGS=() ENVS=() OVERRIDES=()

    # --sbatch-arg=--qos=high carries an option of its own: take it out before '=' is split.
    local arg rest=()
    for arg in "$@"; do
        case $arg in
            --sbatch-arg=?*) SBATCH_ARGS+=("${arg#--sbatch-arg=}") ;;
            *) rest+=("$arg") ;;
        esac
    done
    split_equals ${rest[@]+"${rest[@]}"}
    set -- ${ARGS[@]+"${ARGS[@]}"}
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --dry-run) DRY_RUN=1; shift ;;
            --exclusive) EXCLUSIVE=1; shift ;;
            --nodes) need_value "$1" "${2-}"; NODES=$2; shift 2 ;;
            --gpus-per-node) need_value "$1" "${2-}"; GPUS=$2; shift 2 ;;
            --cpus-per-task) need_value "$1" "${2-}"; CPUS=$2; shift 2 ;;
            --mem) need_value "$1" "${2-}"; MEM=$2; shift 2 ;;
            --partition) need_value "$1" "${2-}"; PARTITION=$2; shift 2 ;;
            --account) need_value "$1" "${2-}"; ACCOUNT=$2; shift 2 ;;
            --time) need_value "$1" "${2-}"; TIME=$2; shift 2 ;;
            --job-name) need_value "$1" "${2-}"; JOB_NAME=$2; shift 2 ;;
            --sbatch-arg) die "write --sbatch-arg=OPTION as one word, e.g. --sbatch-arg=--qos=high" ;;
            --config) need_value "$1" "${2-}"; CONFIG=$2; shift 2 ;;
            --workdir) need_value "$1" "${2-}"; WORKDIR=$2; shift 2 ;;
            --repo-dir) need_value "$1" "${2-}"; REPO_DIR=$2; shift 2 ;;
            --venv) need_value "$1" "${2-}"; VENV=$2; shift 2 ;;
            --mem-fraction) need_value "$1" "${2-}"; MEM_FRACTION=$2; shift 2 ;;
            --env) need_value "$1" "${2-}"; ENVS+=("$2"); shift 2 ;;
            --run-dir) need_value "$1" "${2-}"; RUN_DIR=$2; shift 2 ;;
            --config.*=*) OVERRIDES+=("$1"); shift ;;
            --config.*) die "override $1 has no value; write it as $1=VALUE" ;;
            *) die "unknown option '$1' (see --help)" ;;
        esac
    done
}

# validate: every check before anything is written or submitted.
validate() {
    [[ -n $NODES ]] || die "--nodes is required: how many nodes (one training process each)," \
        "e.g. --nodes 2"
    [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes '$NODES' must be a positive whole number"
    [[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node '$GPUS' must be a positive whole number"
    CPUS=${CPUS:-$((8 * GPUS))}
    [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task '$CPUS' must be a positive whole number"
    if [[ -n $TIME && ! $TIME =~ ^([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}$ ]]; then
        die "--time '$TIME' is not a SLURM time limit; write MINUTES, HH:MM:SS or D-HH:MM:SS"
    fi
    if [[ -n $MEM && ! $MEM =~ ^[0-9]+[KMGT]?$ ]]; then
        die "--mem '$MEM' is not a SLURM memory size; write e.g. 400G, or 0 for all of it"
    fi
    [[ $JOB_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job-name '$JOB_NAME' may only use letters," \
        "digits, '_', '.' and '-'"
    if [[ ! $MEM_FRACTION =~ ^0?\.[0-9]+$ || $MEM_FRACTION =~ ^0?\.0*$ ]]; then
        die "--mem-fraction '$MEM_FRACTION' must be a fraction between 0 and 1, e.g. 0.90"
    fi
    local kv
    for kv in ${ENVS[@]+"${ENVS[@]}"}; do
        [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv' must be KEY=VALUE," \
            "e.g. --env NCCL_SOCKET_IFNAME=ib0"
    done
    for kv in ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do
        [[ $kv == --?* ]] || die "--sbatch-arg=$kv must be an sbatch option, e.g." \
            "--sbatch-arg=--qos=high"
    done

    [[ $REPO_DIR == /* ]] || die "--repo-dir '$REPO_DIR' must be an absolute path (the nodes" \
        "cd into it)"
    REPO_DIR=${REPO_DIR%/}
    VENV=${VENV:-$REPO_DIR/.venv}
    [[ $VENV == /* ]] || die "--venv '$VENV' must be an absolute path (every node activates it)"
    RUN_DIR=${RUN_DIR:-$REPO_DIR/runs/slurm}
    [[ $RUN_DIR == /* ]] || die "--run-dir '$RUN_DIR' must be an absolute path (the job log is" \
        "written there)"

    [[ -n $CONFIG ]] || die "--config is required, e.g. --config experiments/numberline_tiny.py"
    check_config "$CONFIG" "$REPO_DIR"
    [[ -n $WORKDIR ]] || die "--workdir is required: an absolute path on a filesystem every node" \
        "mounts, or gs://BUCKET/PATH"
    # Every process reads and writes the workdir. This script cannot see which filesystems the
    # compute nodes share, so it insists on a path that means the same on every node.
    if [[ $WORKDIR != /* && $WORKDIR != gs://* ]]; then
        die "--workdir '$WORKDIR' must be an absolute path on a filesystem every node mounts" \
            "(e.g. /shared/runs/x; node-local disks such as /tmp will not do) or gs://BUCKET/PATH;" \
            "a relative path would resolve differently on each node"
    fi

    if ((!DRY_RUN)); then
        require_tool sbatch "run this on a SLURM login node"
        [[ -f $VENV/bin/activate ]] || die "no virtual environment at $VENV: create it on the" \
            "shared filesystem first (BUILD.md, CUDA GPUs), or pass --venv DIR"
    fi
}

# batch_script: the sbatch file, on stdout.
batch_script() {
    local devices kv arg train
    devices=$(seq -s, 0 $((GPUS - 1)))
    train=(python -m rlvlm_jax.train --config "$CONFIG" --workdir "$WORKDIR" --distributed
           ${OVERRIDES[@]+"${OVERRIDES[@]}"})

    echo "#!/bin/bash"
    echo "# Written by launch/slurm_gpu.sh; submit again with: sbatch $(quote_word "$SCRIPT")"
    echo "#SBATCH --job-name=$JOB_NAME"
    echo "#SBATCH --nodes=$NODES"
    echo "#SBATCH --ntasks-per-node=1"
    echo "#SBATCH --gpus-per-node=$GPUS"
    echo "#SBATCH --cpus-per-task=$CPUS"
    [[ -z $MEM ]] || echo "#SBATCH --mem=$MEM"
    [[ -z $PARTITION ]] || echo "#SBATCH --partition=$PARTITION"
    [[ -z $ACCOUNT ]] || echo "#SBATCH --account=$ACCOUNT"
    [[ -z $TIME ]] || echo "#SBATCH --time=$TIME"
    ((!EXCLUSIVE)) || echo "#SBATCH --exclusive"
    echo "#SBATCH --output=$RUN_DIR/%x-%j.out"
    for arg in ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do
        echo "#SBATCH $arg"
    done
    cat <<EOS
set -euo pipefail
cd $(quote_word "$REPO_DIR")
source $(quote_word "$VENV/bin/activate")

# One process per node that drives all of the node's GPUs. Without this, jax.distributed.initialize()
# under SLURM gives each process only the GPU numbered SLURM_LOCALID (it assumes one per GPU).
export JAX_LOCAL_DEVICE_IDS=$devices
# The share of each GPU's memory JAX preallocates (its default, 0.75, wastes a quarter of it).
export XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION
# NCCL reports its warnings and errors in the job log (INFO is for debugging a hang).
export NCCL_DEBUG=\${NCCL_DEBUG:-WARN}
# XLA:GPU aborts a process whose devices wait at a collective longer than these. The defaults
# (30 s; 40 s for the first collective, which waits until every node has arrived, e.g. after
# compiling and loading the checkpoint at different speeds) can kill a healthy multi-node job;
# a real hang still ends, with a message naming the stuck collective.
export XLA_FLAGS="\${XLA_FLAGS:-} --xla_gpu_first_collective_call_warn_stuck_timeout_seconds=300\\
 --xla_gpu_first_collective_call_terminate_timeout_seconds=1200\\
 --xla_gpu_executable_warn_stuck_timeout=120 --xla_gpu_executable_terminate_timeout=600"
# Nothing is downloaded from a model hub at run time; print logs as they come.
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
EOS
    for kv in ${ENVS[@]+"${ENVS[@]}"}; do
        echo "export ${kv%%=*}=$(quote_word "${kv#*=}")"
    done
    cat <<EOS

# One task per node (it sees the node's GPUs); --kill-on-bad-exit ends the whole job when one
# process fails, instead of leaving the others waiting in a collective until the time limit.
srun --ntasks-per-node=1 --cpus-per-task="\$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 \\
    $(quote_cmd "${train[@]}")
EOS
}

main() {
    parse_args "$@"
    validate
    SCRIPT=$RUN_DIR/$JOB_NAME.sbatch
    local body
    body=$(batch_script)
    comment "$NODES node(s) x $GPUS GPU(s): one training process per node"
    run mkdir -p "$RUN_DIR"
    if ((DRY_RUN)); then
        # A heredoc, so that the listing stays pasteable and shows the whole script.
        printf 'cat > %s <<'\''EOF'\''\n%s\nEOF\n' "$(quote_word "$SCRIPT")" "$body"
    else
        printf '%s\n' "$body" >"$SCRIPT"
        note "wrote $SCRIPT"
    fi
    run sbatch "$SCRIPT"
    comment "job log: $RUN_DIR/$JOB_NAME-JOBID.out (squeue --me shows the JOBID)"
}

main "$@"
