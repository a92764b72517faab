"""Reading SpamAssassin's rule files (``*.cf``): rule definitions, scores, descriptions, flags and replace tags.

Only the text is read here, nothing is compiled (that is :mod:`smtp.sarules`), so ``tenants`` can know every rule's
score and description without importing ``smtp``. Conditionals (``if``/``ifplugin``/``else``/``endif``) are
evaluated against :data:`LOADED_PLUGINS` and :data:`FEATURES`, which mirror a stock SpamAssassin 4.0 install: the
same rules are active as in Debian's spamd. Files are read as Latin-1 so every byte of a regex survives.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

#: The SpamAssassin version the conditionals are evaluated for (``if (version >= 3.004002)``).
SA_VERSION = 4.000001
#: Plugins Debian's stock ``/etc/spamassassin/*.pre`` load: ``ifplugin`` sections for them are read, the rest not.
#: Network and Bayes plugins are among them so that their rules are read and then reported as skipped by design.
LOADED_PLUGINS = frozenset(f"Mail::SpamAssassin::Plugin::{name}" for name in (
    "URIDNSBL", "SPF", "Pyzor", "Razor2", "SpamCop", "AutoLearnThreshold", "WelcomeListSubject", "WhiteListSubject",
    "MIMEHeader", "ReplaceTags", "DKIM", "Check", "HTTPSMismatch", "URIDetail", "Bayes", "BodyEval", "DNSEval",
    "HTMLEval", "HeaderEval", "MIMEEval", "RelayEval", "URIEval", "WLBLEval", "VBounce", "ImageInfo", "FreeMail",
    "AskDNS", "HashBL", "DMARC", "Rule2XSBody",
))
#: ``can(...)`` features a SpamAssassin 4.0 has (and that Mailward's engine honours).
FEATURES = frozenset({
    "Mail::SpamAssassin::Conf::feature_bug6558_free",
    "Mail::SpamAssassin::Conf::feature_welcomelist_blocklist",
    "Mail::SpamAssassin::Conf::compat_welcomelist_blocklist",
    "Mail::SpamAssassin::Conf::perl_min_version_5010000",
    "Mail::SpamAssassin::Conf::feature_dns_block_rule",
    "Mail::SpamAssassin::Conf::feature_registryboundaries",
    "Mail::SpamAssassin::Conf::feature_originating_ip_headers",
    "Mail::SpamAssassin::Conf::feature_yesno_takes_args",
    "Mail::SpamAssassin::Plugin::BodyEval::has_check_body_length",
    "Mail::SpamAssassin::Plugin::MIMEEval::has_check_abundant_unicode_ratio",
})
#: Rule kinds read from the files (``mimeheader`` tests the headers of each MIME part).
RULE_KINDS = ("header", "body", "rawbody", "uri", "full", "meta", "mimeheader")
#: Score sets: 0 no network tests and no Bayes, 1 network, 2 Bayes, 3 both.
SCORE_SETS = 4
#: A scored rule without a ``score`` line scores this (SpamAssassin's default); ``T_`` test rules score 0.01,
#: ``nice`` rules the negative.
DEFAULT_SCORE = 1.0
TEST_RULE_SCORE = 0.01

_COMMENT = re.compile(r"(?<!\\)#.*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_EVAL = re.compile(r"^eval:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.S)
_ARG = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|([^,\s]+))\s*(?:,|$)""")
_HEADER_RULE = re.compile(r"^(\S+)\s*([=!]~)\s*(.+?)\s*(?:\[\s*if-unset:\s*(.*?)\s*\])?\s*$", re.S)


@dataclass
class RuleDef:
    """One rule as the files define it (the last definition of a name wins, as in SpamAssassin)."""

    name: str
    kind: str
    #: Where it was defined, ``file:line``.
    where: str
    #: The regex as written (``/.../flags`` or ``m{...}flags``), for regex rules.
    regex: str = ""
    #: Header rules: the header spec (``From:addr``, ``ALL``, ``ToCc``…); ``exists:X`` rules set ``exists``.
    header: str = ""
    negate: bool = False
    if_unset: str | None = None
    exists: bool = False
    #: ``eval:`` rules: the function and its arguments (strings as written, quotes removed).
    eval_fn: str = ""
    eval_args: tuple[str, ...] = ()
    #: Meta rules: the expression.
    expr: str = ""


@dataclass
class RuleSet:
    """Everything the rule files say that Mailward uses, plus what it could not read."""

    rules: dict[str, RuleDef] = field(default_factory=dict)
    #: The four scores of each rule that names one (a single value applies to all four sets).
    scores: dict[str, tuple[float, ...]] = field(default_factory=dict)
    describe: dict[str, str] = field(default_factory=dict)
    tflags: dict[str, frozenset[str]] = field(default_factory=dict)
    priority: dict[str, int] = field(default_factory=dict)
    replace_tags: dict[str, str] = field(default_factory=dict)
    replace_pre: dict[str, str] = field(default_factory=dict)
    replace_inter: dict[str, str] = field(default_factory=dict)
    replace_post: dict[str, str] = field(default_factory=dict)
    replace_rules: set[str] = field(default_factory=set)
    #: Freemail domains (``freemail_domains``), for the FreeMail evals; ``*`` wildcards kept as written.
    freemail_domains: set[str] = field(default_factory=set)
    #: ``enlist_addrlist (LIST) pattern``: address patterns (``*`` wildcards) by list name, for check_from_in_list.
    addrlists: dict[str, set[str]] = field(default_factory=dict)
    #: (where, problem) of lines that could not be read: a rule definition that does not parse, a bad conditional.
    problems: list[tuple[str, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def score(self, name: str, score_set: int) -> float:
        """The rule's score in a score set; SpamAssassin's defaults for a rule without a ``score`` line."""
        if name.startswith("__"):
            return 0.0
        values = self.scores.get(name)
        if values is not None:
            return values[score_set]
        default = TEST_RULE_SCORE if name.startswith("T_") else DEFAULT_SCORE
        return -default if "nice" in self.tflags.get(name, frozenset()) else default


# --- conditionals ---------------------------------------------------------------------------------------------------

_COND_TOKEN = re.compile(r"\s*(?:(plugin|can)\s*\(\s*([\w:]+)\s*\)|(version|perl_version)|(\d+(?:\.\d+)?)"
                         r"|(&&|\|\||>=|<=|==|!=|[<>!()]))")


def evaluate_condition(text: str) -> bool:
    """The truth of an ``if`` line's expression (``plugin(X)``, ``can(X)``, ``version``, numbers, ``! && || ( )``,
    comparisons); raises ValueError on anything else. Translated token by token into a Python expression of
    literals only, so nothing from the file is ever executed."""
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _COND_TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"cannot read condition {text!r}")
        pos = m.end()
        func, arg, var, num, op = m.groups()
        if func == "plugin":
            out.append(str(arg in LOADED_PLUGINS))
        elif func == "can":
            out.append(str(arg in FEATURES))
        elif var == "version":
            out.append(repr(SA_VERSION))
        elif var == "perl_version":
            out.append("5.036")
        elif num is not None:
            out.append(num)
        else:
            out.append({"&&": " and ", "||": " or ", "!": " not "}.get(op, op))
    expr = "".join(out)
    try:
        return bool(eval(expr, {"__builtins__": {}}, {}))  # noqa: S307 (literals and operators only, see above)
    except Exception as exc:
        raise ValueError(f"cannot evaluate condition {text!r}") from exc


# --- one line at a time -----------------------------------------------------------------------------------------------

def parse_eval(text: str) -> tuple[str, tuple[str, ...]] | None:
    """``eval:name(args)`` as (name, args), or None when the text is not an eval call."""
    m = _EVAL.match(text.strip())
    if m is None:
        return None
    args: list[str] = []
    rest = m.group(2).strip()
    pos = 0
    while pos < len(rest):
        a = _ARG.match(rest, pos)
        if a is None or a.end() == pos:
            break
        pos = a.end()
        value = next(g for g in a.groups() if g is not None)
        args.append(value.replace("\\'", "'").replace('\\"', '"') if a.group(3) is None else value)
    return m.group(1), tuple(args)


def _define(rs: RuleSet, kind: str, name: str, rest: str, where: str) -> None:
    rule = RuleDef(name=name, kind=kind, where=where)
    evaluated = parse_eval(rest) if rest.startswith("eval:") else None
    if rest.startswith("eval:") and evaluated is None:
        rs.problems.append((where, f"{name}: cannot read eval call {rest[:60]!r}"))
        return
    if evaluated is not None:
        rule.eval_fn, rule.eval_args = evaluated
    elif kind == "meta":
        rule.expr = rest
    elif kind in ("header", "mimeheader"):
        if rest.startswith("exists:"):
            rule.exists, rule.header = True, rest[len("exists:"):].strip()
        else:
            m = _HEADER_RULE.match(rest)
            if m is None:
                rs.problems.append((where, f"{name}: cannot read header rule {rest[:60]!r}"))
                return
            rule.header, rule.negate, rule.regex, rule.if_unset = m.group(1), m.group(2) == "!~", m.group(3), m.group(4)
    else:
        rule.regex = rest
    rs.rules.pop(name, None)  # a redefinition replaces the rule, whatever its kind was
    rs.rules[name] = rule


def _split(text: str) -> tuple[str, str]:
    """The first word of a line and the rest (any run of blanks separates them)."""
    parts = text.split(None, 1)
    return (parts[0], parts[1].strip()) if len(parts) == 2 else ((parts[0], "") if parts else ("", ""))


# Complexity (C901) by design: a parser: one branch per directive.
def _directive(rs: RuleSet, line: str, where: str) -> None:  # noqa: C901
    key, rest = _split(line)
    key = key.lower()
    if key in RULE_KINDS:
        name, definition = _split(rest)
        if not _NAME.match(name) or not definition:
            rs.problems.append((where, f"cannot read {key} line {line[:60]!r}"))
            return
        _define(rs, key, name, definition, where)
    elif key == "score":
        parts = rest.split()
        try:
            values = tuple(float(v) for v in parts[1:5])
        except ValueError:
            rs.problems.append((where, f"cannot read score line {line[:60]!r}"))
            return
        if len(values) == 1:
            rs.scores[parts[0]] = values * SCORE_SETS
        elif len(values) == SCORE_SETS:
            rs.scores[parts[0]] = values
        else:
            rs.problems.append((where, f"score of {parts[0] if parts else '?'}: one or four numbers"))
    elif key == "describe":
        name, text = _split(rest)
        rs.describe[name] = text
    elif key == "tflags":
        name, flags = _split(rest)
        rs.tflags[name] = frozenset(flags.split())
    elif key == "priority":
        name, value = _split(rest)
        try:
            rs.priority[name] = int(value)
        except ValueError:
            rs.problems.append((where, f"cannot read priority line {line[:60]!r}"))
    elif key in ("replace_tag", "replace_pre", "replace_inter", "replace_post"):
        name, value = _split(rest)
        table = {"replace_tag": rs.replace_tags, "replace_pre": rs.replace_pre, "replace_inter": rs.replace_inter,
                 "replace_post": rs.replace_post}[key]
        table[name] = value
    elif key == "replace_rules":
        rs.replace_rules.update(rest.split())
    elif key == "freemail_domains":
        rs.freemail_domains.update(d.lower() for d in rest.split())
    elif key == "enlist_addrlist":
        m = re.match(r"^\(\s*(\w+)\s*\)\s*(.*)$", rest)
        if m is None:
            rs.problems.append((where, f"cannot read enlist_addrlist line {line[:60]!r}"))
            return
        rs.addrlists.setdefault(m.group(1).upper(), set()).update(a.lower() for a in m.group(2).split())


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    """The meaningful lines of a file: comments (an unescaped ``#``) stripped, ``\\#`` unescaped, blank lines
    dropped."""
    for n, raw in enumerate(path.read_bytes().decode("latin-1").splitlines(), 1):
        line = _COMMENT.sub("", raw).strip().replace("\\#", "#")
        if line:
            yield n, line


def parse_files(files: Iterable[Path], into: RuleSet | None = None) -> RuleSet:
    """Read rule files in order into one rule set (later definitions win)."""
    rs = into if into is not None else RuleSet()
    for path in files:
        rs.files.append(path)
        stack: list[bool] = []
        for n, line in _lines(path):
            where = f"{path.name}:{n}"
            key, rest = _split(line)
            key = key.lower()
            if key == "ifplugin":
                stack.append(rest.split()[0] in LOADED_PLUGINS if rest.split() else False)
                continue
            if key == "if":
                try:
                    stack.append(evaluate_condition(rest))
                except ValueError as exc:
                    rs.problems.append((where, str(exc)))
                    stack.append(False)
                continue
            if key == "else":
                if stack:
                    stack[-1] = not stack[-1]
                continue
            if key == "endif":
                if stack:
                    stack.pop()
                else:
                    rs.problems.append((where, "endif without if"))
                continue
            if all(stack):
                _directive(rs, line, where)
        if stack:
            rs.problems.append((path.name, f"{len(stack)} if/ifplugin without endif"))
    return rs
