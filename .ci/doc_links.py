#!/usr/bin/env python3
"""Every relative link in the Markdown docs names a file that exists and,
with a #fragment, a heading in it (GitHub's anchor rules: lower case,
punctuation dropped, spaces to hyphens). Code blocks are skipped."""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"```.*?```", re.S)


def anchor(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def main():
    os.chdir(ROOT)
    files = ["README.md", "CONTRIBUTING.md"] + sorted("docs/" + f for f in os.listdir("docs") if f.endswith(".md"))
    texts = {f: FENCE.sub("", open(f, encoding="utf-8").read()) for f in files}
    anchors = {f: {anchor(h) for h in re.findall(r"^#+ (.*)$", t, re.M)} for f, t in texts.items()}
    broken = []
    for f, text in texts.items():
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, fragment = link.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
            if not os.path.exists(target):
                broken.append(f"{f}: {link}: no such file")
            elif fragment and target in anchors and fragment not in anchors[target]:
                broken.append(f"{f}: {link}: no such heading")
    for line in broken:
        print(line)
    print(f"doc links: {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
