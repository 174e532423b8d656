"""One report from the JSON outputs of several shards (a CI matrix, pytest-split), equal to a serial run's.

Each shard's entries keep the index of their test in the *whole* collection (recorded before any
deselection: ``-k``, ``--deselect``, pytest-split), so the merged report orders tests exactly as a
serial run does. Each shard's evidence images are copied into the merged report's own image folder
(names are per test, so shards never collide). The merged verdict is ``fail`` when any test failed;
otherwise ``pass`` only when every shard finished complete and, where the shards say how the suite
was split (pytest-split's ``--splits``/``--group``, or ``expected_shards``), every shard is there;
anything else is ``incomplete``, with the reason in ``merge_problems``.

Baselines saved by shards merge the same way: the union of their tests (a test stored by two shards
is an error: the shards overlapped).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cnnaudit import baseline as baseline_file
from cnnaudit.report import FORMAT, all_images, document, write_html, write_json
from cnnaudit.report.folder import ReportFolder
from cnnaudit.results import RunResults


class MergeError(ValueError):
    """The shards cannot be merged (not cnnaudit JSON outputs, or they overlap)."""


def read_shard(path: Path) -> dict:
    """A shard's report document; :class:`MergeError` naming the file when it is not one."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise MergeError(f"cannot read shard {path}: {error}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise MergeError(f"{path} is not a cnnaudit JSON report (write one per shard with --cnnaudit-json=PATH)")
    return doc


def merge_reports(shards: list[Path], *, report: Path | None, json_path: Path | None,
                  expected_shards: int | None = None) -> dict:
    """Merge the JSON reports ``shards`` into ``report`` (HTML) and/or ``json_path``; returns the merged document."""
    if report is None and json_path is None:
        raise MergeError("nothing to write: give --report=PATH and/or --json=PATH")
    docs = [(Path(path), read_shard(Path(path))) for path in shards]
    seen: dict[str, Path] = {}
    entries: list[dict] = []
    for path, doc in docs:
        for entry in doc["tests"]:
            if entry["nodeid"] in seen:
                raise MergeError(f"test {entry['nodeid']!r} is in two shards, {seen[entry['nodeid']]} and {path}; "
                                 "shards must split the suite, not overlap")
            seen[entry["nodeid"]] = path
            entries.append(entry)
    problems = _problems(docs, expected_shards)
    anchor = report or json_path
    folder = ReportFolder(anchor.with_name(anchor.stem + "_files"))
    run_dir = folder.claim()
    try:
        for path, doc in docs:
            _copy_images(path, doc, into=run_dir)
        results = RunResults()
        results.finished = entries
        counts = [doc.get("collected") for _, doc in docs]
        results.collected = None if None in counts else sum(counts)
        first = docs[0][1] if docs else {"environment": {}, "baseline": None, "started": 0.0, "duration": 0.0}
        merged = document(
            results, environment=first["environment"], interrupted=any(d.get("interrupted") for _, d in docs),
            in_progress=any(d.get("in_progress") for _, d in docs), image_dir=str(run_dir), baseline=first.get("baseline"),
            started=min((d["started"] for _, d in docs), default=0.0),
            finished=max((d["started"] + d["duration"] for _, d in docs), default=0.0),
            correction=(first.get("correction") or {}).get("method"),
        )
        if problems and merged["verdict"] == "pass":
            merged["verdict"] = "incomplete"
        merged["shards"] = [
            {"path": str(path), "verdict": doc["verdict"], "collected": doc.get("collected"), "reported": doc.get("reported"),
             "split": doc.get("split"), "environment": doc["environment"]}
            for path, doc in docs
        ]
        merged["merge_problems"] = problems
        if json_path is not None:
            write_json(json_path, merged)
        if report is not None:
            write_html(report, merged)
        folder.commit()
    finally:
        folder.release()
    return merged


def merge_baselines(shards: list[Path], out: Path) -> int:
    """The union of the shards' baseline files, written to ``out``; returns the number of Scores stored."""
    tests: dict[str, dict] = {}
    owner: dict[str, Path] = {}
    for path in shards:
        try:
            stored = baseline_file.read(Path(path))
        except ValueError as error:
            raise MergeError(str(error)) from None
        for nodeid, entry in stored.items():
            if nodeid in tests:
                raise MergeError(f"test {nodeid!r} is in two baseline shards, {owner[nodeid]} and {path}")
            tests[nodeid], owner[nodeid] = entry, Path(path)
    baseline_file.write(Path(out), tests)
    return sum(len(entry.get("scores", {})) for entry in tests.values())


def _problems(docs: list[tuple[Path, dict]], expected_shards: int | None) -> list[str]:
    """Why the merged run is not complete: a shard that did not finish, a split group missing, too few shards."""
    problems = []
    for path, doc in docs:
        if doc["verdict"] == "incomplete" or doc.get("interrupted") or doc.get("in_progress"):
            problems.append(f"shard {path} did not finish: {doc.get('reported')} of {doc.get('collected')} tests reported")
    splits = {doc["split"]["splits"] for _, doc in docs if doc.get("split")}
    if len(splits) > 1:
        problems.append(f"the shards were split differently ({', '.join(map(str, sorted(splits)))} ways)")
    elif splits:
        total = splits.pop()
        present = {doc["split"]["group"] for _, doc in docs if doc.get("split")}
        missing = sorted(set(range(1, total + 1)) - present)
        if missing:
            problems.append(f"split group{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {total} missing")
    if expected_shards is not None and len(docs) != expected_shards:
        problems.append(f"{len(docs)} shard files given, {expected_shards} expected")
    return problems


def _copy_images(path: Path, doc: dict, into: Path) -> None:
    """Copy the images the shard's entries name from its image folder (relative to its JSON) into ``into``."""
    if not doc.get("images_dir"):
        return
    source = (path.parent / doc["images_dir"]).resolve()
    for entry in doc["tests"]:
        for image in all_images(entry["evidence"]):
            for name in {image["file"], image["thumb"]}:
                if (source / name).is_file():
                    shutil.copyfile(source / name, into / name)
