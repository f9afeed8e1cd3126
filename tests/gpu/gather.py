"""``tests/gpu/check.sh``'s record of itself: ``check.json`` from the steps run so far (their exit codes and
per-step JSONs) and the plan (the steps not yet reached), written whole after every step, so that a call stopped
at any moment leaves what it had. Torch-free and quick: it runs between the steps."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_REACHED = "not reached"


def git_commit() -> tuple[str, bool | None]:
    """The checkout's commit and whether it is dirty; where git is missing (the lent machine may have none, and
    .git does not travel) the commit is $RESNET_GIT_COMMIT, else "unknown", and dirty is None."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("RESNET_GIT_COMMIT", "unknown"), None


def gather(work: Path, mode: str, plan: list[tuple[str, int]], started: float) -> dict:
    """The check as it stands: every step of ``plan`` with its status and result, in the plan's order."""
    done = {}
    exit_codes = work / "exit-codes"
    for line in exit_codes.read_text().splitlines() if exit_codes.is_file() else []:
        step, code, took, cap = line.split()
        path = work / f"{step}.json"
        record = json.loads(path.read_text()) if path.is_file() else {"result": None}
        if code == "skipped":
            record["status"] = f"{NOT_REACHED}: no time left before the deadline"
        elif code in ("124", "137"):
            record["status"] = "timed out"  # what the step had written by then stays in its result
        elif record.get("status") in (None, "running"):
            record["status"] = f"crashed (exit code {code})"
        record.update(wall_seconds=int(took), budget_seconds=int(cap))
        done[step] = record
    steps = {step: done.get(step, {"status": NOT_REACHED, "result": None, "budget_seconds": cap})
             for step, cap in plan}
    commit, dirty = git_commit()
    return {"mode": mode, "commit": commit, "dirty": dirty, "wall_seconds": int(time.time() - started),
            "steps": steps, "passed": all(record["status"] == "passed" for record in steps.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    parser.add_argument("--plan", required=True, help="the steps and caps, 'step:seconds step:seconds ...'")
    parser.add_argument("--started", type=float, required=True, help="the check's start (seconds since the epoch)")
    parser.add_argument("--target", type=Path, required=True)
    args = parser.parse_args(argv)
    plan = [(entry.split(":")[0], int(entry.split(":")[1])) for entry in args.plan.split()]
    check = gather(args.work, args.mode, plan, args.started)
    temporary = args.target.with_name(f".{args.target.name}.tmp")
    temporary.write_text(json.dumps(check, indent=2))
    temporary.replace(args.target)  # whole or not at all, even if the call is stopped now
    print(json.dumps({step: record["status"] for step, record in check["steps"].items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
