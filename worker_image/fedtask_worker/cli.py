"""`python -m fedtask_worker STAGE ...`: parse flags, run a stage in-process, report its result.

`main(argv) -> exit code` never calls sys.exit and keeps no state between calls, so a fork server can run it
repeatedly in processes forked after `fedtask_worker.preload()`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback

from .errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT, StageError
from .stages import STAGES

RESULT_LIMIT = 4096 - 96  # the kubelet's termination-message limit, with room to spare
EXIT_INTERNAL = 1

EPILOG = f"""\
exit codes: {EXIT_OK} success; {EXIT_BAD_INPUT} bad input (invalid flag, update, model or data; missing object;
permission denied); {EXIT_TRANSIENT} transient store failure that outlasted the retries; {EXIT_INTERNAL} internal error.

environment: FEDTASK_S3_ENDPOINT (host:port), FEDTASK_S3_SECURE (true/false), FEDTASK_S3_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or instead of all these FEDTASK_STORE_ACCESS (JSON of presigned URLs per
object) or FEDTASK_STORE_ACCESS_URL (a presigned URL of that JSON), FEDTASK_STORE_RETRY_SECONDS (default 60),
FEDTASK_CACHE_DIR (dataset cache, default ~/.cache/fedtask), FEDTASK_TORCH_THREADS (default 1),
FEDTASK_AGGREGATE_THREADS (default: CPUs).
"""

STAGE_HELP = {
    "init": "build the initial global model (seeded) and write it -> {uri, bytes, seconds}",
    "train": "train the global model on this device's data, write the update -> {num_samples, loss, seconds, bytes}",
    "aggregate": "validate and combine updates -> {updates, rejected: [{uri, reason}], seconds, bytes}",
    "adjust": "fine-tune on the shared set, write the next global, evaluate -> {validation_accuracy, accuracy (test), "
              "loss, seconds}",
    "publish": "copy the final model to a device-local path -> {uri, bytes, seconds}",
}


class _Parser(argparse.ArgumentParser):
    """Report flag errors as StageError instead of exiting the process."""

    def error(self, message: str):
        raise _UsageError(message)


class _UsageError(StageError):
    exit_code = EXIT_BAD_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fedtask-worker", description="The stages every pod of a federated task runs.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE", parser_class=_Parser)
    for stage in STAGES:
        sub = commands.add_parser(stage, help=STAGE_HELP[stage], description=STAGE_HELP[stage], epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        sub.add_argument("--result-file", help="also write the result JSON here (pods: the termination-message "
                         "path, /dev/termination-log)")
        sub.add_argument("--task", default="", help="task name (recorded in model metadata)")
        sub.add_argument("--round", type=int, default=0, help="round number (recorded in model metadata; "
                         "aggregate rejects updates stamped with another round)")
        _stage_module(stage).add_arguments(sub)
    return parser


def _stage_module(stage: str):
    return importlib.import_module(f"{__package__}.stages.{stage}")


def fit_result(result: dict, limit: int = RESULT_LIMIT) -> str:
    """The result as one JSON line under `limit` bytes; long `rejected` lists are cut and the cut counted."""
    text = json.dumps(result, separators=(",", ":"))
    if len(text.encode()) <= limit or not result.get("rejected"):
        return text
    rejected = [dict(item, reason=str(item.get("reason", ""))[:200]) for item in result["rejected"]]
    kept = len(rejected)
    while True:
        trimmed = dict(result, rejected=rejected[:kept], rejected_omitted=len(rejected) - kept,
                       rejected_total=len(rejected))
        text = json.dumps(trimmed, separators=(",", ":"))
        if len(text.encode()) <= limit or kept == 0:
            return text
        kept = max(0, min(kept - 1, kept * limit // len(text.encode())))


def _write_result_file(path: str | None, text: str) -> None:
    if not path:
        return
    try:
        with open(path, "w") as stream:
            stream.write(text)
            stream.flush()
    except OSError as error:
        print(f"fedtask-worker: cannot write result file {path}: {error.strerror}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    result_file = _peek_result_file(argv)
    stage = next((item for item in argv if item in STAGES), "")
    try:
        parser = build_parser()
        if not argv or argv[0] in ("-h", "--help") or "-h" in argv or "--help" in argv:
            try:
                parser.parse_args(argv or ["--help"])
            except SystemExit:  # argparse's --help prints, then exits: we return instead
                sys.stdout.flush()
                return EXIT_OK if argv else EXIT_BAD_INPUT
        args = parser.parse_args(argv)
        result = _stage_module(args.stage).run(args)
    except StageError as error:
        return _fail(stage, str(error), error.exit_code, result_file)
    except Exception as error:  # a bug: one line, the traceback only on request
        if os.environ.get("FEDTASK_DEBUG"):
            traceback.print_exc()
        message = f"internal error: {type(error).__name__}: {error}".splitlines()[0]
        return _fail(stage, message, EXIT_INTERNAL, result_file)
    text = fit_result(result)
    print(text, flush=True)
    _write_result_file(result_file, text)
    return EXIT_OK


def _fail(stage: str, message: str, code: int, result_file: str | None) -> int:
    message = " ".join(message.split())[:2000]
    print(f"fedtask-worker {stage}: error: {message}".replace("  ", " "), file=sys.stderr, flush=True)
    _write_result_file(result_file, json.dumps({"error": message, "exit_code": code}, separators=(",", ":")))
    return code


def _peek_result_file(argv: list[str]) -> str | None:
    """--result-file, found even when the rest of the command line fails to parse."""
    for index, item in enumerate(argv):
        if item == "--result-file" and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith("--result-file="):
            return item.split("=", 1)[1]
    return None
