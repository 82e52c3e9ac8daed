#!/usr/bin/env bash
# Cloud TPU launcher: create a TPU VM (or a queued resource), install the repository on every
# worker, run the same training command on all workers, follow the logs, start TensorBoard, tear
# down. `--dry-run` prints every command instead of running it. Run with --help for the details.
set -euo pipefail

PROG=tpu.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Files on the workers, relative to the ssh user's home directory.
REMOTE_LOG=rlvlm_jax_train.log
REMOTE_PID=rlvlm_jax_train.pid

usage() {
    cat <<'EOF'
Usage: launch/tpu.sh COMMAND [OPTIONS] [--config.KEY=VALUE ...]

Commands
  create       create the TPU VM (or, with --queued, a queued resource request for it)
  setup        on EVERY worker: clone --repo at --branch, make a venv, install
               requirements.txt, the package and the TPU build of jax (as BUILD.md)
  train        start the same training command on all workers, in the background:
                 python -m rlvlm_jax.train --config CONFIG --workdir WORKDIR --distributed ...
  up           create + setup + train (every option is checked before anything is created)
  logs         follow the training log (worker 0 by default; only process 0 logs metrics)
  tensorboard  start TensorBoard here on WORKDIR/tb
  status       describe the TPU VM (or the queued resource)
  stop         stop the training on all workers
  exec         run a command on the workers: launch/tpu.sh exec ... -- 'nvidia-smi || ls'
  delete       delete the TPU VM (with --queued: the queued resource and its TPU)

Options
  --project ID          Google Cloud project                      (all but tensorboard)
  --zone ZONE           zone, e.g. us-central2-b                  (all but tensorboard)
  --name NAME           TPU VM / queued resource name             (all but tensorboard)
  --accelerator TYPE    e.g. v4-32, v5litepod-32, v5p-64, v6e-32  (create, up, train)
  --runtime-version V   override the TPU software version the table below picks
  --config PATH[:ARG]   experiment config, relative to the repo    (train, up)
  --workdir DIR         training output dir; gs://BUCKET/... on multi-host slices
                                                                  (train, up, tensorboard)
  --repo URL            git URL every worker clones (default: this checkout's 'origin')
  --branch REF          branch or tag to install (default: this checkout's branch)
  --remote-dir DIR      checkout on the workers, relative to home (default: rlvlm_jax)
  --queued              create through a queued resource (waits until it is ACTIVE)
  --spot | --reserved   Spot capacity / your reservation (create, up)
  --worker N|all        worker for logs/exec (default: 0 for logs, all for exec)
  --port P              TensorBoard port (default: 6006)
  --yes                 delete without gcloud's confirmation prompt
  --dry-run             print every command (one per line, pasteable), run nothing
  -h, --help            this text
  --config.KEY=VALUE    passed to training as they are (e.g. --config.ppo.iterations=100)

Accelerator types (TPU software version; hosts = workers):
  v4-8 .. v4-4096                      tpu-ubuntu2204-base   v4-8: 1 host, else cores/8
  v5litepod-1 .. v5litepod-256 (v5e)   v2-alpha-tpuv5-lite   1, 4, 8 chips: 1 host, else chips/4
  v5p-8 .. v5p-12288                   v2-alpha-tpuv5        v5p-8: 1 host, else cores/8
  v6e-1 .. v6e-256                     v2-alpha-tpuv6e       1, 4, 8 chips: 1 host, else chips/4

Every worker of a multi-host slice runs one training process; they must all read and write the
same workdir, so multi-host slices need a gs:// workdir (checked before anything is created). On a
single host a relative workdir lands in ~/REMOTE_DIR on the VM. Paths in --config.KEY=VALUE (e.g. a
model checkpoint) are read on every worker; copy such files to all of them first, e.g.
  launch/tpu.sh exec "${TPU[@]}" -- gcloud storage cp -r gs://my-bucket/llava-sft-hf '~/'
(TPU is the option array of the example below).

Example (the same options for every command; keep them in a bash array):
  TPU=(--project my-proj --zone us-central2-b --name rl-7b --accelerator v4-32)
  launch/tpu.sh up "${TPU[@]}" --repo https://github.com/ME/rlvlm_jax --branch main \
      --config experiments/llava_mistral_7b_numberline.py --workdir gs://my-bucket/runs/nl7b \
      --config.model.checkpoint=/home/me/llava-sft-hf
  launch/tpu.sh logs "${TPU[@]}"
  launch/tpu.sh tensorboard --workdir gs://my-bucket/runs/nl7b
  launch/tpu.sh delete "${TPU[@]}"
EOF
}

# ----------------------------------------------------------------------------- accelerators
# accelerator_info TYPE: sets RUNTIME (the TPU software version Google documents for JAX on this
# generation) and WORKERS (hosts in the slice), or fails naming the known types. Only sizes that
# the generation offers are accepted, so a typo fails here and not after a quota check.
accelerator_info() {
    local type=$1 family size sizes
    family=${type%-*}
    size=${type##*-}
    case $family in
        v4)
            RUNTIME=tpu-ubuntu2204-base
            sizes="8 16 32 64 128 256 512 1024 1536 2048 4096" ;;
        v5litepod)
            RUNTIME=v2-alpha-tpuv5-lite
            sizes="1 4 8 16 32 64 128 256" ;;
        v5p)
            RUNTIME=v2-alpha-tpuv5
            sizes="8 16 32 64 128 256 512 1024 2048 4096 6144 8192 12288" ;;
        v6e)
            RUNTIME=v2-alpha-tpuv6e
            sizes="1 4 8 16 32 64 128 256" ;;
        *)
            sizes="" ;;
    esac
    if [[ $type != *-* || ! " $sizes " == *" $size "* ]]; then
        die "unknown accelerator type '$type'. Known: v4-{8,16,32,...,4096}," \
            "v5litepod-{1,4,8,16,32,64,128,256} (v5e), v5p-{8,16,32,...,12288}," \
            "v6e-{1,4,8,16,32,64,128,256}; the number is TensorCores for v4/v5p and chips for" \
            "v5e/v6e (see --help)"
    fi
    case $family in
        # v4 and v5p count TensorCores: 2 per chip, 4 chips per host.
        v4 | v5p) WORKERS=$((size / 8)) ;;
        # v5e and v6e count chips: up to 8 chips on one host, 4 chips per host beyond that.
        v5litepod | v6e) if ((size <= 8)); then WORKERS=1; else WORKERS=$((size / 4)); fi ;;
    esac
}

# ----------------------------------------------------------------------------- options
parse_args() {
    COMMAND=${1-}
    [[ -n $COMMAND ]] || { usage >&2; die "no command given; see the list above"; }
    shift
    case $COMMAND in
        -h | --help) usage; exit 0 ;;
        -*) die "the command comes first: launch/tpu.sh COMMAND [OPTIONS], e.g." \
                "launch/tpu.sh create --project ... (see --help)" ;;
        create | setup | train | up | logs | tensorboard | status | stop | exec | delete) ;;
        *) die "unknown command '$COMMAND'; one of: create setup train up logs tensorboard" \
               "status stop exec delete (see --help)" ;;
    esac

    PROJECT="" ZONE="" NAME="" ACCELERATOR="" RUNTIME_OVERRIDE="" CONFIG="" WORKDIR=""
    REPO="" BRANCH="" REMOTE_DIR=rlvlm_jax WORKER="" PORT=6006
    QUEUED=0 SPOT=0 RESERVED=0 YES=0
    OVERRIDES=() EXEC_CMD=()

    split_equals "$@"
    set -- ${ARGS[@]+"${ARGS[@]}"}
    while (($#)); do
        case $1 in
            -h | --help) usage; exit 0 ;;
            --dry-run) DRY_RUN=1; shift ;;
            --queued) QUEUED=1; shift ;;
            --spot) SPOT=1; shift ;;
            --reserved) RESERVED=1; shift ;;
            --yes) YES=1; shift ;;
            --project) need_value "$1" "${2-}"; PROJECT=$2; shift 2 ;;
            --zone) need_value "$1" "${2-}"; ZONE=$2; shift 2 ;;
            --name) need_value "$1" "${2-}"; NAME=$2; shift 2 ;;
            --accelerator) need_value "$1" "${2-}"; ACCELERATOR=$2; shift 2 ;;
            --runtime-version) need_value "$1" "${2-}"; RUNTIME_OVERRIDE=$2; shift 2 ;;
            --config) need_value "$1" "${2-}"; CONFIG=$2; shift 2 ;;
            --workdir) need_value "$1" "${2-}"; WORKDIR=$2; shift 2 ;;
            --repo) need_value "$1" "${2-}"; REPO=$2; shift 2 ;;
            --branch) need_value "$1" "${2-}"; BRANCH=$2; shift 2 ;;
            --remote-dir) need_value "$1" "${2-}"; REMOTE_DIR=$2; shift 2 ;;
            --worker) need_value "$1" "${2-}"; WORKER=$2; shift 2 ;;
            --port) need_value "$1" "${2-}"; PORT=$2; shift 2 ;;
            --config.*=*) OVERRIDES+=("$1"); shift ;;
            --config.*) die "override $1 has no value; write it as $1=VALUE" ;;
            --) shift; EXEC_CMD=("$@"); break ;;
            *) die "unknown option '$1' for '$COMMAND' (see --help)" ;;
        esac
    done
}

# require VAR OPTION HINT: a required option must be set for this command.
require() {
    [[ -n ${!1} ]] || die "$COMMAND needs $2 ($3)"
}

# validate: every check for the chosen command, before any command runs (nothing is created or
# billed when an option is wrong).
validate() {
    local needs_tpu=1 needs_acc=0 needs_train=0 needs_setup=0
    case $COMMAND in
        create) needs_acc=1 ;;
        setup) needs_setup=1 ;;
        train) needs_acc=1; needs_train=1 ;;
        up) needs_acc=1; needs_train=1; needs_setup=1 ;;
        tensorboard) needs_tpu=0 ;;
        exec) ((${#EXEC_CMD[@]})) || die "exec needs a command after '--', e.g." \
                  "launch/tpu.sh exec ... -- 'df -h'" ;;
    esac
    if ((needs_tpu)); then
        require PROJECT --project "the Google Cloud project id, e.g. --project my-proj"
        require ZONE --zone "a zone that offers the accelerator, e.g. --zone us-central2-b"
        require NAME --name "the TPU VM name, e.g. --name rl-7b"
        if [[ ! $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]]; then
            die "--name '$NAME' is not a valid TPU name: lower-case letters, digits and '-'," \
                "starting with a letter, at most 63 characters"
        fi
    fi
    if ((SPOT && RESERVED)); then
        die "--spot and --reserved exclude each other; pick one (or neither for on-demand)"
    fi
    if ((needs_acc)); then
        require ACCELERATOR --accelerator "e.g. --accelerator v4-32; see --help for the types"
        accelerator_info "$ACCELERATOR"
        [[ -z $RUNTIME_OVERRIDE ]] || RUNTIME=$RUNTIME_OVERRIDE
    fi
    if [[ $COMMAND == tensorboard ]]; then
        require WORKDIR --workdir "the training workdir; TensorBoard reads WORKDIR/tb"
    fi
    if ((needs_train)); then
        require CONFIG --config "e.g. --config experiments/numberline_tiny.py"
        check_config "$CONFIG"
        require WORKDIR --workdir "gs://BUCKET/PATH (required on multi-host slices)"
        if ((WORKERS > 1)) && [[ $WORKDIR != gs://* ]]; then
            die "--workdir '$WORKDIR' is not reachable from every worker: $ACCELERATOR has" \
                "$WORKERS hosts and each writes checkpoints and logs to the workdir; use a" \
                "Cloud Storage bucket the TPU's service account can write, e.g." \
                "--workdir gs://my-bucket/runs/$NAME"
        fi
        if [[ $WORKDIR == gs://* && ! $WORKDIR =~ ^gs://[a-z0-9][-a-z0-9_.]*[a-z0-9](/.*)?$ ]]
        then
            die "--workdir '$WORKDIR' is not a valid gs:// path; write gs://BUCKET/PATH"
        fi
    fi
    if ((needs_setup)); then
        if [[ -z $REPO ]]; then
            REPO=$(git -C "$REPO_ROOT" remote get-url origin 2>/dev/null) ||
                die "setup needs --repo: this checkout has no 'origin' remote; pass the git URL" \
                    "every worker can clone, e.g. --repo https://github.com/ME/rlvlm_jax"
        fi
        if [[ -z $BRANCH ]]; then
            BRANCH=$(git -C "$REPO_ROOT" symbolic-ref --short -q HEAD 2>/dev/null) ||
                die "setup needs --branch: this checkout is not on a branch; pass the branch" \
                    "or tag to install, e.g. --branch main"
        fi
    fi
    if [[ -n $WORKER && ! $WORKER =~ ^([0-9]+|all)$ ]]; then
        die "--worker '$WORKER' must be a worker number (0, 1, ...) or 'all'"
    fi
    [[ $PORT =~ ^[0-9]+$ ]] || die "--port '$PORT' must be a port number, e.g. 6006"
    if [[ $REMOTE_DIR == /* || $REMOTE_DIR == *..* || ! $REMOTE_DIR =~ ^[A-Za-z0-9_./-]+$ ]]
    then
        die "--remote-dir '$REMOTE_DIR' must be a plain path relative to the workers' home" \
            "directory, e.g. rlvlm_jax"
    fi
    if [[ $COMMAND == tensorboard ]]; then
        require_tool tensorboard "pip install tensorboard (and gcsfs to read a gs:// workdir)"
    else
        require_tool gcloud "install the Google Cloud CLI: https://cloud.google.com/sdk/docs/install"
    fi
}

# ----------------------------------------------------------------------------- gcloud
# on_workers WORKER REMOTE_COMMAND: run one shell command line over ssh on the given worker(s).
# `--worker=all` runs it on every host of the slice in parallel.
on_workers() {
    run gcloud compute tpus tpu-vm ssh "$NAME" "${WHERE[@]}" "--worker=$1" "--command=$2"
}

cmd_create() {
    local tier=()
    ((SPOT)) && tier=(--spot)
    ((RESERVED)) && tier=(--reserved)
    comment "$ACCELERATOR: $WORKERS host(s), TPU software $RUNTIME"
    if ((QUEUED)); then
        # The queued resource and its TPU VM share the name, so every other command finds the VM.
        run gcloud compute tpus queued-resources create "$NAME" "--node-id=$NAME" "${WHERE[@]}" \
            "--accelerator-type=$ACCELERATOR" "--runtime-version=$RUNTIME" ${tier[@]+"${tier[@]}"}
        wait_active
    else
        run gcloud compute tpus tpu-vm create "$NAME" "${WHERE[@]}" \
            "--accelerator-type=$ACCELERATOR" "--version=$RUNTIME" ${tier[@]+"${tier[@]}"}
    fi
}

# wait_active: a queued request is granted when capacity frees up; setup needs the VM, so poll its
# state until ACTIVE and stop on the states that never become ACTIVE.
wait_active() {
    local state describe=(gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}")
    if ((DRY_RUN)); then
        comment "repeat until it prints ACTIVE (tpu.sh polls every 30 s):"
        run "${describe[@]}" "--format=value(state.state)"
        return
    fi
    note "waiting for queued resource $NAME to become ACTIVE (Ctrl-C stops waiting, not the" \
         "request; later run: launch/tpu.sh setup/train with the same options)"
    while true; do
        state=$("${describe[@]}" "--format=value(state.state)")
        case $state in
            ACTIVE) note "queued resource $NAME is ACTIVE"; return ;;
            FAILED | SUSPENDING | SUSPENDED)
                die "queued resource $NAME is $state and will not become ACTIVE; see why with" \
                    "'$(quote_cmd "${describe[@]}")', then delete it with" \
                    "launch/tpu.sh delete --queued ..." ;;
            *) note "queued resource $NAME: ${state:-unknown state}; checking again in 30 s" ;;
        esac
        sleep 30
    done
}

cmd_setup() {
    # One command line for the remote shell, steps joined with '&&' so the first failure stops it.
    local dir repo branch apt steps=()
    dir=$(quote_word "$REMOTE_DIR")
    repo=$(quote_word "$REPO")
    branch=$(quote_word "$BRANCH")
    # apt waits for the lock that unattended upgrades hold on a freshly booted VM.
    apt="sudo apt-get -qq -o DPkg::Lock::Timeout=600"
    # Clone the branch, or move an existing checkout to it.
    steps+=("if [ -d $dir/.git ]; then git -C $dir fetch --depth 1 origin $branch && git -C $dir \
checkout --force FETCH_HEAD; else git clone --depth 1 --branch $branch $repo $dir; fi")
    steps+=("cd $dir")
    # The pins need Python >= 3.11 and the Ubuntu 22.04 TPU images have 3.10: take the first
    # python3.x >= 3.11 on the VM, else install Ubuntu's python3.11.
    steps+=("PY=\$(for p in python3.13 python3.12 python3.11 python3; do if command -v \$p \
>/dev/null && \$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then echo \$p; break; fi; \
done)")
    steps+=("{ [ -n \"\$PY\" ] || { $apt update && $apt install -y python3.11 python3.11-venv \
&& PY=python3.11; }; }")
    # A venv (installing python3.x-venv when the image lacks it).
    steps+=("{ [ -x .venv/bin/pip ] || \"\$PY\" -m venv .venv || { $apt update && $apt install \
-y \"\$PY-venv\" && \"\$PY\" -m venv --clear .venv; }; }")
    steps+=(". .venv/bin/activate" "pip install -q --upgrade pip")
    # BUILD.md, "Cloud TPU VMs": the pinned requirements (plus gcsfs etc. for the gs:// workdir)
    # and the package, then the TPU build of the jax version requirements.txt pinned.
    steps+=("pip install -q -r requirements.txt -r requirements-cloud.txt -e .")
    steps+=("pip install -q \"jax[tpu]==\$(python -c 'import jax; print(jax.__version__)')\"")
    steps+=("python -c 'import jax, rlvlm_jax; print(\"jax\", jax.__version__, \"installed\")'")
    comment "install $REPO ($BRANCH) on every worker into ~/$REMOTE_DIR"
    on_workers all "$(join_steps "${steps[@]}")"
}

# join_steps STEP...: one shell command line that runs the steps in order and stops at a failure.
join_steps() {
    local out="" step
    for step in "$@"; do
        out+="${out:+ && }$step"
    done
    printf '%s' "$out"
}

cmd_train() {
    # The same command on every worker: with --distributed each process calls
    # jax.distributed.initialize(), which finds the slice's hosts by itself on TPU VMs. nohup and
    # the redirections let ssh return while training goes on; the pid file serves `stop` and stops
    # a second launch over a running one.
    local train dir script
    train=(python -m rlvlm_jax.train --config "$CONFIG" --workdir "$WORKDIR" --distributed
           ${OVERRIDES[@]+"${OVERRIDES[@]}"})
    dir=$(quote_word "$REMOTE_DIR")
    script="cd $dir && . .venv/bin/activate"
    script+=" && if [ -s \"\$HOME/$REMOTE_PID\" ] && kill -0 \"\$(cat \"\$HOME/$REMOTE_PID\")\""
    script+=" 2>/dev/null; then echo \"\$(hostname): training is already running; stop it with"
    script+=" launch/tpu.sh stop\" >&2; exit 1; fi"
    script+=" && { HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 nohup $(quote_cmd "${train[@]}")"
    script+=" > \"\$HOME/$REMOTE_LOG\" 2>&1 < /dev/null & echo \$! > \"\$HOME/$REMOTE_PID\"; }"
    comment "train on every worker ($WORKERS host(s)); log: ~/$REMOTE_LOG on each worker"
    on_workers all "$script"
    comment "follow it: launch/tpu.sh logs --project $PROJECT --zone $ZONE --name $NAME"
}

cmd_logs() {
    comment "the log of worker ${WORKER:-0} (Ctrl-C stops following; training goes on)"
    on_workers "${WORKER:-0}" "tail -n 200 -F \"\$HOME/$REMOTE_LOG\""
}

cmd_stop() {
    # SIGTERM to the pid `train` recorded on each worker; workers with nothing running are skipped.
    local pid="\"\$HOME/$REMOTE_PID\"" script
    script="if [ -s $pid ]; then kill \"\$(cat $pid)\" 2>/dev/null || true; rm -f $pid; fi"
    on_workers all "$script"
}

cmd_exec() {
    on_workers "${WORKER:-all}" "${EXEC_CMD[*]}"
}

cmd_status() {
    if ((QUEUED)); then
        run gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}"
    else
        run gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}"
    fi
}

cmd_tensorboard() {
    # Run here (not on a worker): TensorBoard reads gs:// directly, with gcsfs installed.
    run tensorboard "--logdir=${WORKDIR%/}/tb" "--port=$PORT"
}

cmd_delete() {
    local quiet=()
    ((YES)) && quiet=(--quiet)
    if ((QUEUED)); then
        # --force deletes the TPU VM together with the request.
        run gcloud compute tpus queued-resources delete "$NAME" "${WHERE[@]}" --force \
            ${quiet[@]+"${quiet[@]}"}
        return
    fi
    # A VM made by a queued resource cannot be deleted on its own; say how instead of failing later.
    if ((!DRY_RUN)) && gcloud compute tpus queued-resources describe "$NAME" "${WHERE[@]}" \
        >/dev/null 2>&1; then
        die "$NAME was created through a queued resource; delete it with --queued (removes the" \
            "request and its TPU VM)"
    fi
    run gcloud compute tpus tpu-vm delete "$NAME" "${WHERE[@]}" ${quiet[@]+"${quiet[@]}"}
}

main() {
    parse_args "$@"
    validate
    WHERE=("--zone=$ZONE" "--project=$PROJECT")  # the flags every gcloud call takes
    case $COMMAND in
        up) cmd_create; cmd_setup; cmd_train ;;
        *) "cmd_$COMMAND" ;;
    esac
}

main "$@"
