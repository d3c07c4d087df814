"""The source blocks of an org file: ``#+begin_src LANG :arg value ...`` to ``#+end_src``."""

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN = re.compile(r"^[ \t]*#\+begin_src[ \t]+(\S+)(.*)$", re.IGNORECASE)
END = re.compile(r"^[ \t]*#\+end_src", re.IGNORECASE)


@dataclass
class Block:
    path: Path
    line: int
    language: str
    args: dict
    text: str

    @property
    def mode(self):
        return self.args.get(":txscope-doc", "tangle" if ":tangle" in self.args else "run")

    @property
    def id(self):
        return f"{self.path.relative_to(ROOT)}:{self.line}-{self.language}-{self.mode}"


def parse_args(text):
    """`:key value :flag` header arguments as a dict."""
    args, key = {}, None
    for word in text.split():
        if word.startswith(":"):
            key = word
            args[key] = ""
        elif key:
            args[key] = (args[key] + " " + word).strip()
    return args


def blocks(path):
    """The source blocks of an org file, dedented as org-babel does."""
    found, current, lines = [], None, path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if current is None:
            match = BEGIN.match(line)
            if match:
                current = Block(path, number, match[1].lower(), parse_args(match[2]), "")
                body = []
        elif END.match(line):
            current.text = _dedent(body)
            found.append(current)
            current = None
        else:
            body.append(line)
    assert current is None, f"{path}:{current.line}: block never ends"
    return found


def _dedent(lines):
    return textwrap.dedent("\n".join(lines)) + "\n"
