#!/usr/bin/env bash
# Data-parallel training on several devices, in the foreground; exits non-zero if any rank fails
# (the others are stopped) and names that rank's log.
#
# Ascend with a rank table (the reference's form):
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]
#   Starts one process per device of this server listed in the rank table. DEVICE_NUM, if set,
#   takes the first DEVICE_NUM of them: with fewer than the table lists, their processes get a
#   table of just those devices (TRAIN_OUTPUT_PATH/logs/rank_table_<DEVICE_NUM>.json, ranks
#   0..DEVICE_NUM-1; refused for a table that also lists other servers). A table that lists no
#   device of this host, or a DEVICE_NUM outside 1 .. those devices, is refused (status 2)
#   before anything starts.
# msrun (CPU, GPU, or Ascend without a rank table), one or several machines:
#   bash scripts/run_distribute_train.sh --worker_num N [--local_worker_num M] [--master_addr HOST]
#        [--master_port PORT] [--node_rank R] [--timeout SECONDS] [--comm_timeout SECONDS] DATASET DATASET_PATH MINDRECORD_PATH TRAIN_OUTPUT_PATH [PRE_TRAINED_PATH] [-- train.py flags]
#   N processes in all, M of them on this machine (default N); run the same command on every
#   machine with its --node_rank and the first machine's --master_addr. --timeout: how long the
#   processes wait for each other when the job starts; --comm_timeout: how long a CPU collective
#   waits for a rank (MS_CPU_COMM_OP_TIMEOUT; default that variable, else train.py's 1800).
# Logs: TRAIN_OUTPUT_PATH/logs/ (worker_<rank>.log, scheduler.log and msrun.log for msrun).
# Ctrl-C or SIGTERM asks every rank to stop after the same step (rank 0 saves); a second one
# stops them at once. The work is done by src/launcher (python -m src.launcher).
# `sh scripts/...` (the reference's README form; dash on Debian) runs this again under bash.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail
source "$(dirname "$0")/common.sh"

# The rank-table form starts "$PYTHON" train.py per device; relative paths are taken from here.
export PYTHON
here=$PWD
cd "$ROOT"
exec "$PYTHON" -m src.launcher --cwd "$here" "$@"
