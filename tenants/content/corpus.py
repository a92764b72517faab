"""Labelled mail corpora on disk: finding them, splitting each into a training and a held-out part, deduplicating.

Two layouts are read: the SpamAssassin public corpus as ``fetch-spamassassin.sh`` unpacks it (folders
``easy-ham-1``, ``spam-2``, …; train on ``easy-ham-1`` + ``spam-1``, hold out the rest, as its README says) and the
tarball layout ``SETNAME/<ham|spam|phish>/*.eml`` (the last :data:`HOLDOUT_FRACTION` of each label folder in
file-name order is held out). A directory holding several such corpora is read as all of them.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from tenants.exceptions import MailwardError

#: Share of each label folder (last in file-name order) kept out of training for evaluation.
HOLDOUT_FRACTION = 0.2
#: SpamAssassin corpus folders: trained on, and held out (its README's split).
SA_TRAIN = ("easy-ham-1", "spam-1")
SA_HELDOUT = ("easy-ham-2", "hard-ham-1", "spam-2")
_SA_FOLDER = re.compile(r"^(easy-ham|hard-ham|spam)-\d+$")
#: Label folder names of the tarball layout, and whether they hold spam.
LABELS = {"ham": False, "spam": True, "phish": True, "phishing": True}
#: Bodies shorter than this are not used to detect duplicates (short bodies repeat by chance: "see attached").
MIN_DEDUPE_BODY = 64


class CorpusError(MailwardError):
    """A corpus directory is missing, empty or of an unknown layout; the message names it."""


@dataclass(frozen=True)
class Sample:
    """One labelled mail file: its collection, the folder it came from, and whether it is spam."""

    collection: str
    folder: str
    path: Path
    spam: bool


@dataclass
class Collection:
    """A labelled corpus split into the part trained on and the part held out for evaluation."""

    name: str
    train: list[Sample] = field(default_factory=list)
    heldout: list[Sample] = field(default_factory=list)


def _mail_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _is_spamassassin(path: Path) -> bool:
    return any(child.is_dir() and _SA_FOLDER.match(child.name) for child in path.iterdir())


def _is_labelled_set(path: Path) -> bool:
    return any(child.is_dir() and child.name in LABELS for child in path.iterdir())


def _spamassassin(path: Path) -> Collection:
    out = Collection("spamassassin" if path.name in ("", ".") else path.name)
    for folder in sorted(c for c in path.iterdir() if c.is_dir() and _SA_FOLDER.match(c.name)):
        spam = folder.name.startswith("spam")
        samples = [Sample(out.name, folder.name, p, spam) for p in _mail_files(folder)]
        (out.train if folder.name in SA_TRAIN else out.heldout).extend(samples)
    return out


def _labelled_set(path: Path) -> Collection:
    out = Collection(path.name)
    for folder in sorted(c for c in path.iterdir() if c.is_dir() and c.name in LABELS):
        files = _mail_files(folder)
        cut = len(files) - math.ceil(HOLDOUT_FRACTION * len(files))
        out.train += [Sample(out.name, folder.name, p, LABELS[folder.name]) for p in files[:cut]]
        out.heldout += [Sample(out.name, folder.name, p, LABELS[folder.name]) for p in files[cut:]]
    return out


def find_collections(dirs: list[Path]) -> list[Collection]:
    """Every corpus in ``dirs`` (each a corpus, or a folder of corpora); raises :class:`CorpusError` on bad input."""
    found: list[Collection] = []
    for top in dirs:
        if not top.is_dir():
            raise CorpusError(f"{top}: not a directory")
        candidates = [top] if _is_spamassassin(top) or _is_labelled_set(top) else sorted(
            c for c in top.iterdir() if c.is_dir() and (_is_spamassassin(c) or _is_labelled_set(c)))
        if not candidates:
            raise CorpusError(f"{top}: no labelled mail here: expected SpamAssassin folders (easy-ham-1, spam-1, …) "
                              f"or SETNAME/<{'|'.join(LABELS)}>/*.eml")
        for path in candidates:
            collection = _spamassassin(path) if _is_spamassassin(path) else _labelled_set(path)
            if not collection.train:
                raise CorpusError(f"{path}: no mail files to train on")
            if any(c.name == collection.name for c in found):
                raise CorpusError(f"{path}: a corpus named {collection.name} was given twice")
            found.append(collection)
    return found


def read_mail(path: Path) -> bytes:
    """A mail file's bytes, without the mbox ``From `` separator line some exports begin with (not part of the mail,
    and in some corpora present on one label only, so a model would learn the label from it)."""
    raw = path.read_bytes()
    if raw.startswith(b"From "):
        end = raw.find(b"\n")
        raw = raw[end + 1:] if end >= 0 else b""
    return raw


_WS = re.compile(rb"\s+")
#: A Message-ID that can identify a mail: ``<local@domain>`` with no redaction brackets in it.
_REAL_MESSAGE_ID = re.compile(r"^<?[^<>\s\[\]]+@[^<>\s\[\]]+>?$")


def dedupe_keys(raw: bytes) -> tuple[str | None, str | None]:
    """(Message-ID, hash of the white-space-normalised body) of a mail, for finding copies across sets."""
    try:
        mid = BytesHeaderParser(policy=compat32).parsebytes(raw).get("Message-ID")
    except Exception:
        mid = None
    message_id = " ".join(str(mid).split()).lower() if mid else None
    if message_id and not _REAL_MESSAGE_ID.match(message_id):
        message_id = None  # a redacted or placeholder id ("<[removed]>") is shared by unrelated mails
    split = re.search(rb"\r?\n\r?\n", raw)
    body = _WS.sub(b" ", raw[split.end():]).strip() if split else b""
    return message_id or None, hashlib.sha256(body).hexdigest() if len(body) >= MIN_DEDUPE_BODY else None
