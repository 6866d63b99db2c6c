"""The output folder of ``cmrseg segment``: where it may be, which files in it are ours, and its
state read back from complete records only.

Rules (issue 13): the output folder is never an input, never inside an input folder and never
holds an input; a file already in it is replaced only when an earlier ``cmrseg segment`` run
wrote it (it is listed in a study record, ``OUT/studies/<study>.json``; a rerun that fails on a
study keeps the earlier run's files of it listed; a run killed mid-study listed each file in the
study's journal before writing it); records are read from finished files only, never
from another writer's temporary file, and a record that cannot be read is skipped with a
warning instead of ending the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cmrseg.errors import CmrsegError

TMP_PREFIX = ".tmp-"  # cmrseg.atomic's temporary names


def check_location(out: Path, inputs: list[Path]) -> None:
    """Refuse an output folder that is an input, lies inside an input folder, holds an input,
    or is an existing file."""
    if out.exists() and not out.is_dir():
        raise CmrsegError(f"{out}: the output folder is an existing file; give a folder")
    o = out.resolve()
    for raw in inputs:
        p = Path(raw).resolve()
        if o == p:
            raise CmrsegError(f"{out}: the output folder is the input {raw}; choose another folder "
                              "(masks are named after their inputs and would replace them)")
        if p.is_dir() and o.is_relative_to(p):
            raise CmrsegError(f"{out}: the output folder is inside the input folder {raw}; choose a folder outside it")
        if p.is_relative_to(o):
            raise CmrsegError(f"{out}: the output folder holds the input {raw}; choose a folder that holds no inputs")


FIGURE_KEYS = ("montage", "curve", "bullseye")  # a study record's pictures (StudyWriter.figures)
REPORT_FILES = ("measures.csv", "volumes.csv", "aha.csv", "aha_slices.csv", "summary.json", "report.html")
RECORDS = "studies"  # OUT/studies/<study>.json: one record per study
LEGACY_RECORDS = "cases"  # where runs before the renaming kept them; still read, so such folders resume


WRITING = ".writing"  # OUT/studies/.writing/<study>.json: the files a study's run is writing (journal_file)


def journal_file(out: Path, study: str) -> Path:
    """Where a study's run lists each file before writing it, removed once the study's record is
    written: what a run killed mid-study (SIGKILL, out of memory, power) left is still this
    tool's to replace."""
    return out / RECORDS / WRITING / f"{study}.json"


def record_file(out: Path, study: str) -> Path:
    """Where a study's record is written (:data:`RECORDS`)."""
    return out / RECORDS / f"{study}.json"


def read_record(out: Path, study: str) -> dict[str, Any] | None:
    """A study's record (or one a run before the renaming wrote), None when there is none readable."""
    for folder in (RECORDS, LEGACY_RECORDS):
        try:
            rec = json.loads((out / folder / f"{study}.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            return rec
    return None


def check_reports_ours(out: Path) -> None:
    """The batch files are rebuilt in place: refuse a folder where files of those names exist
    but no earlier ``cmrseg segment`` run left its records (``studies/`` or ``shards/``)."""
    if not out.is_dir() or any((out / d).is_dir() for d in (RECORDS, LEGACY_RECORDS, "shards")):
        return
    theirs = [n for n in REPORT_FILES if (out / n).exists()]
    if theirs:
        raise CmrsegError(f"{out}: holds {', '.join(theirs)} not written by cmrseg segment; choose another output folder")


def ensure_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written in it (one line if not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CmrsegError(f"{out}: cannot write to the output folder ({exc.strerror or exc})") from None


def study_records(out: Path) -> list[dict[str, Any]]:
    """Every complete study record in ``out/studies`` (temporary files of writers skipped; an
    unreadable record skipped with a warning), sorted by study, with those a run before the
    renaming left in ``out/cases`` for studies not recorded since."""
    records = {r["study"]: r for r in _records(out / LEGACY_RECORDS) if "study" in r}
    records.update({r["study"]: r for r in _records(out / RECORDS) if "study" in r})
    return [records[k] for k in sorted(records)]


def shard_records(out: Path) -> list[dict[str, Any]]:
    """The record of every run (``--shard i/n``) that wrote into ``out``."""
    return [r for r in _records(out / "shards") if "shard" in r]


def _records(folder: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith(TMP_PREFIX):
            continue
        try:
            rec = json.loads(path.read_text())
        except FileNotFoundError:  # removed between listing and reading (an --overwrite rerun)
            continue
        except (OSError, ValueError) as exc:
            print(f"cmrseg: warning: {path}: unreadable record skipped ({type(exc).__name__})", file=sys.stderr)
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def record_files(rec: dict[str, Any]) -> list[str]:
    """The files (relative to the output folder) a study record says a run wrote: its masks and
    extras, its pictures, and those an earlier run left that a failed rerun kept (``kept``)."""
    return [rel for rel in [*rec.get("outputs", []), *(rec.get(key) for key in FIGURE_KEYS), *rec.get("kept", [])]
            if rel]


def journal_entries(out: Path, study: str) -> list[str]:
    """The files the study's journal lists (none without one)."""
    try:
        entries = json.loads(journal_file(out, study).read_text()).get("writing", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [rel for rel in entries if isinstance(rel, str)]


def kept_files(out: Path, study: str) -> list[str]:
    """The files the study's current record or journal lists that are still in ``out``: what a
    failed rerun's record keeps, so they stay this tool's to replace (the failed run removed only
    what it wrote itself)."""
    rec = read_record(out, study)
    listed = dict.fromkeys([*(record_files(rec) if rec else []), *journal_entries(out, study)])
    return [rel for rel in listed if (out / rel).exists()]


def owned_files(out: Path) -> set[Path]:
    """Files an earlier run wrote into ``out``: masks and pictures listed in its study records,
    and those a run killed mid-study had begun (its journals, :func:`journal_file`)."""
    journals = [rel for j in _records(out / RECORDS / WRITING) for rel in j.get("writing", []) if isinstance(rel, str)]
    return {(out / rel).resolve() for rec in study_records(out) for rel in record_files(rec)} | {
        (out / rel).resolve() for rel in journals}


def check_target(target: Path, owned: set[Path]) -> None:
    """Refuse to replace a file in the output folder that cmrseg did not write."""
    if target.exists() and target.resolve() not in owned:
        raise CmrsegError(f"{target}: exists and was not written by cmrseg segment; not replaced "
                          "(move it away or choose another output folder)")


LOCK_PREFIX = ".cmrseg-lock-"


@contextlib.contextmanager
def writer_lock(out: Path, shard: tuple[int, int]) -> Iterator[None]:
    """Hold ``out`` for this run: an advisory lock (``fcntl.flock``) on ``OUT/.cmrseg-lock-<i>-of-<n>``
    for the run's shard, refused with one line naming the other writer's pid when another
    ``cmrseg segment`` holds the same shard, or holds a shard of another split of the batch
    (whose studies overlap this one's). Shards of one split (``--shard 1/4`` ... ``4/4``, a
    Slurm job array) write into one folder side by side, as designed. Where ``fcntl`` is missing
    (Windows) no lock is taken. Written here: the filelock package locks whole files by name,
    not this rule over several."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    index, count = shard
    path = out / f"{LOCK_PREFIX}{index + 1}-of-{count}"
    with open(path, "a+") as fh:
        _lock_or_refuse(fh, path, fcntl)
        for other in sorted(out.glob(f"{LOCK_PREFIX}*")):
            if not other.name.endswith(f"-of-{count}"):
                with open(other, "a+") as probe:
                    _lock_or_refuse(probe, other, fcntl, shared=True)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def _lock_or_refuse(fh, path: Path, fcntl, shared: bool = False) -> None:
    """Take ``fh``'s lock without waiting (shared: a probe, released when ``fh`` closes), or
    raise naming the process that holds it."""
    try:
        fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "unknown"
        shard = path.name[len(LOCK_PREFIX):].replace("-of-", "/")
        raise CmrsegError(f"{path.parent}: another cmrseg segment is writing here (pid {pid}, shard {shard}); wait "
                          "for it to finish or choose another output folder") from None
