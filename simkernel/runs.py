"""A trained run's folder: its layout, done.json, verification, and what a rerun may reuse.

``train.run`` trains into ``runs_dir / <hash of the config>``; everything here reads or settles
that folder without torch (``safetensors`` is imported only to check a weights header)::

    config.json     the training config (and where the corpus came from)
    corpus/         the corpus, when the run sampled its own
    metrics.jsonl   one JSON object per eval (:func:`read_metrics`)
    checkpoint/     model/, state.pt, train_config.json, step.json (:func:`checkpoint_step`)
    snapshots/      step-XXXXXXX/: the model alone along training, when asked (:func:`snapshots`)
    done.json       written last: why training stopped, the final numbers and ``outputs``, the
                    size and SHA-256 of every file a later call reuses (:func:`run_outputs`)

A finished run is trusted only once its files match done.json's record (:func:`inspect_run`,
:func:`verify_run`); :func:`settle_run` makes a damaged or older one trustworthy again.  The
exceptions say what a folder holds when a run cannot go on: :class:`CheckpointExists`,
:class:`NoCheckpoint`, :class:`Interrupted`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .store import check_outputs, file_record, outputs_record, write_json

CHECKPOINT = "checkpoint"
DONE = "done.json"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
CORPUS = "corpus"
OUTPUTS = "outputs"         # done.json's record of the files a later call reuses
SNAPSHOTS = "snapshots"
_SNAPSHOT_NAME = re.compile(r"step-(\d{7,})")


def checkpoint_step(run_dir) -> int | None:
    """The step of run_dir's checkpoint; None when there is none (or it predates step.json)."""
    try:
        return int(json.loads((Path(run_dir) / CHECKPOINT / "step.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def snapshot_name(step: int) -> str:
    """The folder name of the snapshot at ``step`` under snapshots/: 'step-0000064'."""
    return f"step-{int(step):07d}"


def snapshots(run_dir) -> list[tuple[int, Path]]:
    """[(step, folder)] in step order: the model-only snapshots training saved along the way
    (``train.TrainConfig.snapshot_steps``) in run_dir/snapshots/step-XXXXXXX/, each a folder that
    ``model.load_model`` reads (config.json + model.safetensors).  Folders without both files and
    other names (a publish's temp folder) are skipped; [] when there are none."""
    root = Path(run_dir) / SNAPSHOTS
    if not root.is_dir():
        return []
    out = []
    for d in root.iterdir():
        m = _SNAPSHOT_NAME.fullmatch(d.name)
        if m and (d / "config.json").is_file() and (d / "model.safetensors").is_file():
            out.append((int(m.group(1)), d))
    return sorted(out)


def read_metrics(run_dir) -> list[dict]:
    """The rows of run_dir/metrics.jsonl; a torn last line (a crash mid-append) is skipped."""
    try:
        lines = (Path(run_dir) / METRICS).read_text().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


class CheckpointExists(ValueError):
    """The run folder holds an interrupted run's checkpoint and ``resume`` was not asked for."""

    def __init__(self, run_dir: Path, step: int | None):
        self.run_dir, self.step = Path(run_dir), step
        at = f" at step {step}" if step is not None else ""
        super().__init__(f"run {str(run_dir)!r} has a checkpoint{at} from an interrupted run; pass "
                         f"resume=True to continue it, or remove the folder to start again")


class NoCheckpoint(ValueError):
    """``resume=True`` but the run folder has no checkpoint."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        super().__init__(f"resume=True, but run {str(run_dir)!r} has no checkpoint to continue")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during ``train.run``, with what the run folder holds now: ``step`` (the last step
    trained, 0 before training), ``checkpoint_step`` (None: no checkpoint, so a rerun starts
    over; else a rerun needs ``resume=True``), ``contents`` (e.g. "the config, the corpus and
    metrics up to step 40").  Still a KeyboardInterrupt for callers that do not catch it."""

    def __init__(self, run_dir: Path, step: int, rank: int = 0):
        self.run_dir, self.step, self.rank = Path(run_dir), int(step), rank
        self.has_checkpoint = (self.run_dir / CHECKPOINT).is_dir()
        self.checkpoint_step = checkpoint_step(run_dir) if self.has_checkpoint else None
        parts = [w for f, w in ((CONFIG, "the config"), (f"{CORPUS}/meta.json", "the corpus"))
                 if (self.run_dir / f).is_file()]
        rows = read_metrics(run_dir)
        if rows:
            parts.append(f"metrics up to step {rows[-1]['step']}")
        self.contents = (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1
                         else parts[0] if parts else "nothing yet")
        super().__init__(f"interrupted at step {self.step}: {str(run_dir)!r} holds {self.contents}"
                         + (f" and {self.checkpoint_text}; call run() again with resume=True to continue"
                            if self.has_checkpoint else " but no checkpoint yet; call run() again to start over"))

    @property
    def checkpoint_text(self) -> str:
        return "a checkpoint" + (f" at step {self.checkpoint_step}" if self.checkpoint_step is not None else "")


def run_status(run_dir: Path) -> dict | None:
    """done.json of a finished run, else None."""
    f = Path(run_dir) / DONE
    return json.loads(f.read_text()) if f.is_file() else None


#: what every finished run's checkpoint holds (step.json is missing from some older runs)
_CHECKPOINT_FILES = ("model/config.json", "model/model.safetensors", "state.pt", "train_config.json")
_WEIGHTS = f"{CHECKPOINT}/model/model.safetensors"


def run_outputs(run_dir) -> dict:
    """done.json's ``outputs``: {path relative to the run folder: ``store.file_record`` (size in
    bytes, sha256)} of what a later call reuses: every file of checkpoint/ (the model, state.pt,
    the configs), of snapshots/ (when training saved any), metrics.jsonl and config.json (when there is one: ``train`` called on a bare
    folder writes none).

    Not corpus/: it is an input of training, not a result of it.  Of it a later call reuses
    only world.npz (icl-eval), whose zip CRC-32s already catch a changed byte when it is read;
    retraining could not repair a damaged corpus anyway (a rerun keeps it); and a ``--corpus``
    run's corpus lives outside the folder.  Nor anything later commands write into the run
    folder (icl-eval's tables): only these files are recorded, so those never count as damage."""
    run_dir = Path(run_dir)
    rec = {f"{CHECKPOINT}/{rel}": r for rel, r in outputs_record(run_dir / CHECKPOINT).items()}
    # snapshots are reused by strategies' attribution, so a flipped byte there is damage too
    if (run_dir / SNAPSHOTS).is_dir():
        rec.update({f"{SNAPSHOTS}/{rel}": r for rel, r in outputs_record(run_dir / SNAPSHOTS).items()})
    for name in (METRICS, CONFIG):
        if (run_dir / name).is_file():
            rec[name] = file_record(run_dir / name)
    return dict(sorted(rec.items()))


def _unrecorded_problems(run_dir: Path) -> list[str]:
    """What can be checked of a finished run whose done.json predates ``outputs``: the files
    every finished run has exist and are non-empty, and the weights' safetensors header parses
    and covers the file (which catches a truncated file; a flipped byte needs the record)."""
    problems = []
    for rel in [*(f"{CHECKPOINT}/{f}" for f in _CHECKPOINT_FILES), METRICS]:
        p = run_dir / rel
        if not p.is_file():
            problems.append(f"{rel} missing")
        elif p.stat().st_size == 0:
            problems.append(f"{rel} is empty")
    if not any(x.startswith(_WEIGHTS) for x in problems):
        try:
            from safetensors import safe_open
            with safe_open(str(run_dir / _WEIGHTS), "pt") as f:
                f.keys()
        except Exception as e:     # safetensors raises its own error types on a damaged header
            problems.append(f"{_WEIGHTS} has an unreadable header ({type(e).__name__})")
    return problems


def inspect_run(run_dir: Path, hashes: bool = True) -> tuple[str, dict | None, list[str]]:
    """(state, done.json, problems) of a run folder.  state: "fresh" (no done.json), "intact"
    (every recorded file as recorded), "older" (a done.json without ``outputs`` whose files pass
    :func:`_unrecorded_problems`) or "damaged" (problems says how)."""
    f = run_dir / DONE
    if not f.is_file():
        return "fresh", None, []
    try:
        done = json.loads(f.read_text())
        if not isinstance(done, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return "damaged", None, [f"{DONE} cannot be read ({type(e).__name__})"]
    outputs = done.get(OUTPUTS)
    if outputs is None:
        problems = _unrecorded_problems(run_dir)
        return ("damaged" if problems else "older"), done, problems
    if not isinstance(outputs, dict) or not all(isinstance(v, dict) for v in outputs.values()):
        return "damaged", done, [f"{DONE} has a malformed {OUTPUTS!r} record"]
    problems = check_outputs(run_dir, outputs, hashes=hashes)
    return ("damaged" if problems else "intact"), done, problems


def verify_run(run_dir, hashes: bool = True) -> list[str]:
    """The problems of a finished run folder, one short phrase each; [] when it is intact.
    ["not finished"] when there is no done.json (or no folder).  Otherwise each file that
    done.json's ``outputs`` records and that is missing, of another size, or (``hashes``, the
    default) of another SHA-256: 'checkpoint/model/model.safetensors does not match its recorded
    sha256'.  A done.json written before ``outputs`` existed gets the checks that need no record
    (the checkpoint's files and metrics.jsonl exist and are non-empty, the weights' header
    parses); ``train.run`` then records its hashes.  Reads only.  Hashing reads every recorded file
    (weights plus twice their size of optimizer state): about 1 MB for the tiny model, 10 MB for
    cpu, 1 GB for ginc-12 (about a second at the 1-2 GB/s of SHA-256 on one core)."""
    state, _, problems = inspect_run(Path(run_dir), hashes)
    return ["not finished"] if state == "fresh" else problems


def settle_run(run_dir: Path) -> tuple[str, bool]:
    """Under the lock, on rank 0: make a finished run that is not intact trustworthy again.
    Returns (note, discarded).  An older done.json whose files pass the checks without a record
    gets ``outputs`` (atomically, the rest of it kept); a damaged run loses what a fresh start
    would otherwise reuse.  A fresh or intact folder is left alone."""
    state, done, problems = inspect_run(run_dir)
    if state == "older":
        write_json(run_dir / DONE, {**done, OUTPUTS: run_outputs(run_dir)})
        return f"run {run_dir.name}: recorded the hashes of an older run (its {DONE} had none)", False
    if state != "damaged":
        return "", False
    # the checkpoint goes first and done.json last: a crash in between leaves a done.json that
    # the next run again finds damaged, never a bare checkpoint that resume=True would trust
    if (run_dir / CHECKPOINT).exists():
        shutil.rmtree(run_dir / CHECKPOINT)
    (run_dir / CONFIG).unlink(missing_ok=True)      # rewritten by train.prepare_run_dir for this call
    (run_dir / DONE).unlink(missing_ok=True)
    # metrics.jsonl is emptied by train.train() itself, as for every start from step 0
    return f"run {run_dir.name}: {'; '.join(problems)}; trained again", True


def ensure_resumable(run_dir: Path, resume: bool) -> None:
    """:class:`CheckpointExists` when the folder holds a checkpoint and ``resume`` is False;
    :class:`NoCheckpoint` when ``resume`` is True and it holds none.  (What the folder holds, not
    a bad argument: the CLI exits 1 on these, and reads a ``check*`` function's error as a usage
    error, hence the name.)"""
    has_ckpt = (run_dir / CHECKPOINT).is_dir()
    if has_ckpt and not resume:
        raise CheckpointExists(run_dir, checkpoint_step(run_dir))
    if resume and not has_ckpt:
        raise NoCheckpoint(run_dir)
