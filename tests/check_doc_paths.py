#!/usr/bin/env python3
"""Every repository path README.md and docs/*.md name must exist in the clone, and no document may
point outside it (an absolute path on some machine). A path is a word starting with one of the
repository's top-level folders (configs/, tools/, docs/, ...) or a top-level file; globs, placeholders
(step_N, <dir>, ...) and what a run or a user creates (runs/, build/, models/, data files) are not.

usage: check_doc_paths.py REPO_ROOT"""
import os
import re
import subprocess
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
tracked = subprocess.run(["git", "-C", root, "ls-files"], capture_output=True, text=True)
files = tracked.stdout.split() if tracked.returncode == 0 else []
if not files:  # not a git checkout: the folders as they are
    files = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
top = sorted({f.split("/")[0] for f in files if "/" in f and not f.startswith(".")})
top_files = sorted({f for f in files if "/" not in f and not f.startswith(".")})

docs = ["README.md"] + sorted("docs/" + f for f in os.listdir(os.path.join(root, "docs")) if f.endswith(".md"))
# A repository path: a top-level folder, then path characters.
path_re = re.compile(r"(?<![\w./-])((?:%s)/[\w.+/-]*[\w/])" % "|".join(map(re.escape, top)))
file_re = re.compile(r"(?<![\w./-])(%s)(?![\w-])" % "|".join(map(re.escape, top_files)))
# Paths outside any clone: the root of some machine's file system.
abs_re = re.compile(r"(?<![\w.~-])(/(?:work|home|root|mnt|scratch|Users|opt/\w+/\w+)/[\w.+/-]+)")
placeholder = re.compile(r"[*?<>{}\[\]$]|_N\b|\bN\b|step_\d*N|XX|\.\.\.")

problems = []
for doc in docs:
    with open(os.path.join(root, doc), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            for m in path_re.finditer(line):
                p = m.group(1).rstrip("/.")
                # The whole word the path is part of: a glob or placeholder anywhere in it rules it out.
                end = m.end()
                while end < len(line) and not line[end].isspace() and line[end] not in "`'\"),;":
                    end += 1
                if placeholder.search(line[m.start():end]):
                    continue
                if line[max(0, m.start() - 2):m.start()] == '["':  # a key inside a file (h5py), not a path
                    continue
                # Token files, a run's output and the like live under data/ only as user data.
                if p.startswith("data/") and re.search(r"\.(h5|bin|jsonl|txt)$", p):
                    continue
                if not os.path.exists(os.path.join(root, p)):
                    problems.append(f"{doc}:{n}: {p} does not exist in the repository")
            for m in abs_re.finditer(line):
                problems.append(f"{doc}:{n}: {m.group(1)} is an absolute path outside the repository")
            if re.search(r"\bDESIGN\.md\b", line) and not os.path.exists(os.path.join(root, "DESIGN.md")):
                problems.append(f"{doc}:{n}: names DESIGN.md, which the repository does not have")
for p in problems:
    print(p)
print(f"check_doc_paths: {len(docs)} documents, {len(problems)} problems")
sys.exit(1 if problems else 0)
