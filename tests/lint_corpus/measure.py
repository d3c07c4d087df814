"""Precision and recall of txscope-lint against labelled code.

The synthetic corpus (the directories next to this file; labels in
manifest.json, also marked in the files as ``# expect: CODE``)::

    python tests/lint_corpus/measure.py

The public projects it was modelled on (labels in real_projects.json), read
from git snapshots named ``OWNER+NAME`` (a bare repository or one with
``.git``; ``repo/`` under that name is looked into too)::

    git clone --bare https://github.com/Siceron/webTFEScheduler SNAPSHOTS/Siceron+webTFEScheduler
    ...
    python tests/lint_corpus/measure.py --real SNAPSHOTS

Each labelled project is exported at its recorded commit into a temporary
directory and linted as a whole.  Scores count TXS101-TXS108 on files that
parse: TXS100 (a file that does not parse) is reported, not scored.
``--write-manifest`` rewrites manifest.json from the ``# expect:`` markers.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from webpy_txscope.lint import check_path  # noqa: E402
from webpy_txscope._lint_project import python_files  # noqa: E402

MANIFEST = HERE / "manifest.json"
REAL = HERE / "real_projects.json"
_EXPECT = re.compile(r"#\s*expect:\s*(TXS\d{3})")
Label = tuple[str, int, str]  # path relative to the corpus root, line, code


def corpus_files(root: Path) -> list[Path]:
    return [p for p in python_files(root) if p.resolve() != Path(__file__).resolve()]


def markers(root: Path = HERE) -> set[Label]:
    found = set()
    for path in corpus_files(root):
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for code in _EXPECT.findall(line):
                found.add((path.relative_to(root).as_posix(), number, code))
    return found


def manifest(path: Path = MANIFEST) -> set[Label]:
    files = json.loads(path.read_text())["files"]
    return {(name, line, code) for name, labels in files.items() for line, code in labels}


def write_manifest(root: Path = HERE) -> None:
    labels = markers(root)
    files = {p.relative_to(root).as_posix(): [] for p in corpus_files(root)}
    for name, line, code in sorted(labels):
        files[name].append([line, code])
    # One line per file, so that a label change is a one-line diff.
    entries = ",\n".join(f"  {json.dumps(name)}: {json.dumps(labels)}" for name, labels in files.items())
    MANIFEST.write_text('{\n "about": "Expected txscope-lint findings per file of this corpus: '
                        '[line, code].",\n "files": {\n' + entries + "\n }\n}\n")


def findings(root: Path) -> set[Label]:
    return {(path.relative_to(root).as_posix(), f.line, f.code)
            for path in python_files(root) if path.resolve() != Path(__file__).resolve()
            for f in check_path(path)}


@dataclass
class Score:
    expected: set[Label] = field(default_factory=set)
    found: set[Label] = field(default_factory=set)
    files: int = 0

    def add(self, expected: set[Label], found: set[Label], files: int, prefix: str = "") -> None:
        self.expected |= {(prefix + p, n, c) for p, n, c in expected}
        self.found |= {(prefix + p, n, c) for p, n, c in found}
        self.files += files

    def scored(self, labels: set[Label]) -> set[Label]:
        unparsed = {p for p, _, c in self.found if c == "TXS100"}
        return {label for label in labels if label[2] != "TXS100" and label[0] not in unparsed}

    @property
    def true_positives(self) -> set[Label]:
        return self.scored(self.expected) & self.scored(self.found)

    @property
    def false_positives(self) -> set[Label]:
        return self.scored(self.found) - self.scored(self.expected)

    @property
    def false_negatives(self) -> set[Label]:
        return self.scored(self.expected) - self.scored(self.found)

    @property
    def precision(self) -> float:
        found = len(self.scored(self.found))
        return len(self.true_positives) / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = len(self.scored(self.expected))
        return len(self.true_positives) / expected if expected else 1.0

    def report(self, title: str) -> str:
        unparsed = sorted({p for p, _, c in self.found if c == "TXS100"})
        lines = [f"{title}: precision {self.precision:.2f} ({len(self.true_positives)}/"
                 f"{len(self.scored(self.found))}), recall {self.recall:.2f} "
                 f"({len(self.true_positives)}/{len(self.scored(self.expected))}); "
                 f"{self.files} files, {len(unparsed)} of which do not parse (TXS100, not scored)"]
        lines += [f"  false positive: {p}:{n} {c}" for p, n, c in sorted(self.false_positives)]
        lines += [f"  missed: {p}:{n} {c}" for p, n, c in sorted(self.false_negatives)]
        return "\n".join(lines)


def synthetic() -> Score:
    score = Score()
    score.add(manifest(), findings(HERE), len(corpus_files(HERE)))
    return score


def _git_dir(snapshots: Path, repo: str) -> Path:
    base = snapshots / repo.replace("/", "+")
    for candidate in (base / "repo" / ".git", base / "repo", base / ".git", base):
        if (candidate / "HEAD").is_file():
            return candidate
    raise SystemExit(f"no git snapshot of {repo} under {snapshots}: clone it to {base} "
                     f"(git clone --bare https://github.com/{repo} {base})")


def export_python_files(git_dir: Path, commit: str, target: Path, under: str = "") -> None:
    """Write the commit's ``*.py`` files (under ``under``) into ``target``.

    Snapshots may lack big blobs (test data): those files are skipped.
    """
    listing = subprocess.run(
        ["git", "--git-dir", str(git_dir), "ls-tree", "-r", "-z", commit, "--", under or "."],
        capture_output=True, check=True).stdout.decode().split("\0")
    for entry in filter(None, listing):
        meta, path = entry.split("\t", 1)
        mode, kind, blob = meta.split()
        if kind != "blob" or not path.endswith(".py") or mode == "120000":
            continue
        content = subprocess.run(["git", "--git-dir", str(git_dir), "cat-file", "blob", blob],
                                 capture_output=True)
        if content.returncode == 0:
            destination = target / Path(path).relative_to(under or ".")
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(content.stdout)


def real(snapshots: Path) -> list[tuple[str, Score]]:
    scores = []
    for project in json.loads(REAL.read_text())["projects"]:
        git_dir = _git_dir(snapshots, project["repo"])
        with tempfile.TemporaryDirectory() as tmp:
            export_python_files(git_dir, project["commit"], Path(tmp), project.get("under", ""))
            expected = {(e["path"], e["line"], e["code"]) for e in project["expected"]}
            score = Score()
            score.add(expected, findings(Path(tmp)), len(list(python_files(Path(tmp)))))
            scores.append((project["repo"], score))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, metavar="SNAPSHOTS",
                        help="directory of git snapshots named OWNER+NAME")
    parser.add_argument("--write-manifest", action="store_true",
                        help="rewrite manifest.json from the # expect: markers")
    args = parser.parse_args(argv)
    if args.write_manifest:
        write_manifest()
    if args.real:
        total = Score()
        for repo, score in real(args.real):
            print(score.report(repo))
            total.add(score.expected, score.found, score.files, prefix=f"{repo}:")
        print(total.report("all real projects"))
    else:
        print(synthetic().report("synthetic corpus"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
