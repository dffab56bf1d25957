"""Markdown pages as GitHub shows them, for the tests that hold the docs to the code and to each
other: the anchors of a page's headings and the targets of its relative links."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from testbed.paths import REPO

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}#{1,6} +(.+?)(?: +#+)? *$")
CODE_SPAN = re.compile(r"(`+).+?\1")
INLINE_LINK = re.compile(r"\]\(<?([^()\s>]*)>?(?: +\"[^\"]*\")?\)")
LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]: *<?(\S+?)>?(?: +\"[^\"]*\")?$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def prose_lines(text: str) -> Iterator[str]:
    """The page's lines outside fenced code blocks (a `#` there is a shell comment, not a heading)."""
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text as rendered (a link's text, no markup), lower case,
    punctuation dropped but `-` and `_`, each space a `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text).lower().replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(text):
        if match := HEADING.match(line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    """The targets of the page's inline links, images and link definitions, outside code."""
    targets = []
    for line in prose_lines(text):
        if match := LINK_DEFINITION.match(line):
            targets.append(match.group(1))
            continue
        targets += INLINE_LINK.findall(CODE_SPAN.sub("", line))
    return targets


def resolves(page: Path, target: str) -> bool:
    """Whether a relative link of the page names a file of the repository, and a heading there
    when it has an anchor."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists() or (path and not file.is_relative_to(REPO)):
        return False
    return not anchor or (file.suffix == ".md" and anchor in anchors(file.read_text()))


def broken_links(page: Path) -> list[str]:
    """The page's relative links that do not resolve (web addresses are not checked)."""
    targets = [t for t in links(page.read_text()) if not EXTERNAL.match(t)]
    return [t or "(an empty link)" for t in targets if not t or not resolves(page, t)]
