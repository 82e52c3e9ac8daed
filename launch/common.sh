# shellcheck shell=bash
# Helpers shared by launch/tpu.sh and launch/slurm_gpu.sh (sourced, never run on its own).
#
# Every command a launcher would run goes through `run`, so `--dry-run` prints exactly what would
# run, one command per line, quoted so that the line can be pasted into a shell.

# The repository root (the checkout these scripts live in): configs are checked against it.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0

# die MESSAGE: what is wrong and what to do, on stderr; exit status 2 (bad usage), nothing has run.
die() {
    printf '%s: error: %s\n' "${PROG:-launch}" "$*" >&2
    exit 2
}

# note MESSAGE: progress for the user on stderr (stdout is kept for the commands of --dry-run).
note() {
    printf '%s: %s\n' "${PROG:-launch}" "$*" >&2
}

# quote_word WORD: WORD as the shell reads it back. Plain words stay as they are (readable output);
# anything else is single-quoted, with embedded single quotes written as '\''.
quote_word() {
    local word=$1
    if [[ -n $word && $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$word"
    else
        printf "'%s'" "${word//\'/\'\\\'\'}"
    fi
}

# quote_cmd WORD...: the words as one shell command line (each word quoted by quote_word).
quote_cmd() {
    local out="" word
    for word in "$@"; do
        out+="${out:+ }$(quote_word "$word")"
    done
    printf '%s' "$out"
}

# run CMD ARG...: with --dry-run print the command on stdout; otherwise echo it on stderr and run it.
run() {
    if ((DRY_RUN)); then
        printf '%s\n' "$(quote_cmd "$@")"
    else
        printf '+ %s\n' "$(quote_cmd "$@")" >&2
        "$@"
    fi
}

# comment TEXT: a '#' line in the --dry-run listing (still pasteable), a note otherwise.
comment() {
    if ((DRY_RUN)); then
        printf '# %s\n' "$*"
    else
        note "$*"
    fi
}

# need_value OPTION VALUE: options that take a value must get one (not the next option).
need_value() {
    if [[ -z ${2-} || ${2-} == --* ]]; then
        die "option $1 needs a value (e.g. $1=VALUE); see --help"
    fi
}

# require_tool NAME HINT: the tool must be on PATH before anything runs (not checked by --dry-run,
# which must work on a machine without gcloud or sbatch).
require_tool() {
    if ((!DRY_RUN)) && ! command -v "$1" >/dev/null 2>&1; then
        die "'$1' is not on PATH: $2 (or add --dry-run to only print the commands)"
    fi
}

# check_config CONFIG [ROOT]: an experiments/*.py path relative to the repository root (ROOT,
# default this checkout), optionally with ':ARG' (ml_collections config_flags syntax), naming a file
# that exists there.
check_config() {
    local config=$1 file=${1%%:*} root=${2:-$REPO_ROOT}
    [[ -n $file ]] || die "--config is empty; pass e.g. --config experiments/numberline_tiny.py"
    if [[ $file == /* ]]; then
        die "--config $config is absolute; pass it relative to the repository root (e.g." \
            "experiments/numberline_tiny.py): the training command runs in the repository on" \
            "every host"
    fi
    if [[ $file != *.py ]]; then
        die "--config $config is not a .py config file; pass e.g. experiments/numberline_tiny.py"
    fi
    if [[ ! -f $root/$file ]]; then
        die "--config: $file does not exist in $root; pass a file under experiments/" \
            "(ls $root/experiments)"
    fi
}

# split_equals ARG...: rewrite '--opt=value' as '--opt' 'value' (except '--config.x=y' overrides,
# which pass through to training as they are, and anything after '--'); result in ARGS.
split_equals() {
    ARGS=()
    local arg rest=0
    for arg in "$@"; do
        if ((rest)); then
            ARGS+=("$arg")
            continue
        fi
        case $arg in
            --) rest=1; ARGS+=("$arg") ;;
            --config.*) ARGS+=("$arg") ;;
            --*=*) ARGS+=("${arg%%=*}" "${arg#*=}") ;;
            *) ARGS+=("$arg") ;;
        esac
    done
}
