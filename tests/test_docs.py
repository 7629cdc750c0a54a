"""The docs stand on their own in a fresh clone: every relative link resolves inside the repository."""

from __future__ import annotations

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked(*patterns: str) -> list[str]:
    out = subprocess.run(["git", "-C", ROOT, "ls-files", *patterns], capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if p]


def test_markdown_links_stay_inside_the_repository():
    broken = []
    for doc in tracked("*.md"):
        for target in LINK.findall(open(os.path.join(ROOT, doc), encoding="utf-8").read()):
            if re.match(r"^[a-z]+:", target):
                continue  # an absolute URL, not a file
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), target))
            if not path.startswith(ROOT + os.sep) or not os.path.exists(path):
                broken.append(f"{doc}: {target}")
    assert broken == []


def test_nothing_refers_to_the_shared_directory_outside_the_repository():
    mine = os.path.relpath(__file__, ROOT)  # this test names the string it looks for
    hits = [p for p in tracked() if p != mine
            and "../shared" in open(os.path.join(ROOT, p), encoding="utf-8", errors="replace").read()]
    assert hits == []
