"""SpamAssassin's ReplaceTags: ``<TAG>`` in the regex of a rule named by ``replace_rules`` becomes the tag's
``replace_tag`` value, with ``<pre NAME>``, ``<post NAME>`` and ``<inter NAME>`` put before, after and between tags.

A port of ``Mail::SpamAssassin::Plugin::ReplaceTags::finish_parsing_end``, pass for pass: split on ``<...>``, an
empty piece between two tags takes the inter text, then each known tag is replaced; tag values that name tags
themselves are expanded again, at most five passes.
"""

from __future__ import annotations

import re

from tenants.sarules.parser import RuleSet

_SPLIT = re.compile(r"(<[^<>]+>)")
_TAG = re.compile(r"<(.+?)>")
#: Expansion passes at most (nested tags), as SpamAssassin.
MAX_PASSES = 6


def _take(source: str, kind: str) -> tuple[str, str | None]:
    m = re.search(rf"<{kind} (.+?)>", source)
    if m is None:
        return source, None
    return source[:m.start()] + source[m.end():], m.group(1)


def replace_tags(source: str, rs: RuleSet) -> str:
    """The pattern with its tags replaced (unknown tags are left as written)."""
    passes = 0
    again = True
    while again and passes < MAX_PASSES:
        again = False
        source, pre_name = _take(source, "pre")
        source, post_name = _take(source, "post")
        source, inter_name = _take(source, "inter")
        pieces = _SPLIT.split(source)
        while pieces and pieces[-1] == "":
            pieces.pop()  # Perl's split drops trailing empty fields
        pre = rs.replace_pre.get(pre_name, "") if pre_name else ""
        post = rs.replace_post.get(post_name, "") if post_name else ""
        inter = rs.replace_inter.get(inter_name, "") if inter_name else ""
        if pre or post:
            pieces = [pre + p + post if _SPLIT.fullmatch(p) else p for p in pieces]
        if inter:
            pieces = [inter if p == "" else p for p in pieces]
        for i, piece in enumerate(pieces):
            m = _TAG.search(piece)
            if m is None:
                continue
            value = rs.replace_tags.get(m.group(1))
            if value:
                pieces[i] = piece.replace(f"<{m.group(1)}>", value)
                again = again or bool(re.search(r"<[^>]+>", value))
        source = "".join(pieces)
        passes += 1
    return source
