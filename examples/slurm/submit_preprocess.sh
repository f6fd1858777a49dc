#!/usr/bin/env bash
# Submit the preprocessing of many JSONL files: one array task per file, then the merge.
#
#   IXT_PREPROCESS_ARGS="--tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --append-eod" \
#       examples/slurm/submit_preprocess.sh /shared/data/corpus /shared/raw/*.jsonl.zst
#
# writes /shared/data/corpus_text_document.{bin,idx,ixt.npy,meta.json}. Run it from the
# repository root (the jobs run there). Environment:
#   IXT_PREPROCESS_ARGS  flags for tools/preprocess_data.py (required)
#   IXT_MAX_PARALLEL     array tasks running at once (default 32)
#   IXT_SBATCH_ARGS      extra sbatch options for both jobs, e.g. "--partition=cpu --account=me"
#   IXT_LOG_DIR          where the job logs go (default runs/logs/, relative to the current folder)
# Prints "ARRAY_JOB_ID MERGE_JOB_ID" on its last line.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 OUTPUT_PREFIX INPUT.jsonl..." >&2; exit 2; }
OUTPUT_PREFIX=$(realpath -m "$1"); shift
: "${IXT_PREPROCESS_ARGS:?set IXT_PREPROCESS_ARGS (tokenizer flags etc. for tools/preprocess_data.py)}"
HERE=$(cd "$(dirname "$0")" && pwd)
SHARD_DIR=$OUTPUT_PREFIX.shards
LOG_DIR=${IXT_LOG_DIR:-runs/logs}
mkdir -p "$SHARD_DIR" "$LOG_DIR"

# The input list fixes the order of the shards and so of the merged dataset.
for f in "$@"; do realpath "$f"; done > "$SHARD_DIR/inputs.txt"
N=$#
read -ra EXTRA <<<"${IXT_SBATCH_ARGS:-}"
export IXT_OUTPUT_PREFIX=$OUTPUT_PREFIX IXT_SHARD_DIR=$SHARD_DIR IXT_INPUT_LIST=$SHARD_DIR/inputs.txt
export IXT_PREPROCESS_ARGS

# --parsable prints only the job id. afterok on an array job waits for all of its tasks;
# --kill-on-invalid-dep cancels the merge if any task fails (instead of leaving it
# pending forever with Reason=DependencyNeverSatisfied).
ARRAY=$(sbatch --parsable --output="$LOG_DIR/%x-%A_%a.out" "${EXTRA[@]}" \
        --array="0-$((N - 1))%${IXT_MAX_PARALLEL:-32}" "$HERE/preprocess_data.sbatch" encode)
MERGE=$(sbatch --parsable --job-name=ixt-merge --output="$LOG_DIR/%x-%j.out" --cpus-per-task=1 "${EXTRA[@]}" \
        --dependency="afterok:$ARRAY" --kill-on-invalid-dep=yes "$HERE/preprocess_data.sbatch" merge)
echo "submitted: array job $ARRAY ($N files), merge job $MERGE -> ${OUTPUT_PREFIX}_<key>_document.*" >&2
echo "$ARRAY $MERGE"
