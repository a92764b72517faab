"""LDAP fixtures: one real slapd per session (see :mod:`tests.support.ldapserver`), and a fresh branch of it per test.

``ldap_dir`` adds its own ``ou=`` under the suffix with a few people (``mail`` plus ``proxyAddresses`` aliases), so a
test may change its entries without touching another test's. A slapd that cannot start fails the tests that need it;
only on a machine without slapd installed, outside CI, are they skipped (CI=true: they fail).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import ldap3
import pytest

from tests.support.ldapserver import ROOT_DN, ROOT_PASSWORD, SLAPD, SUFFIX, LdapServer, add_person, start_slapd

_branches = itertools.count()


@pytest.fixture(scope="session")
def ldap_server() -> Iterator[LdapServer]:
    if not SLAPD.exists() and os.environ.get("CI") != "true":
        pytest.skip(f"{SLAPD} is not installed (CI installs it and fails instead of skipping)")
    server = start_slapd()
    yield server
    server.stop()


@dataclass
class LdapBranch:
    """One test's part of the directory: its base DN, how to bind, and an admin connection to change it."""

    server: LdapServer
    base_dn: str
    conn: ldap3.Connection
    bind_dn: str = ROOT_DN
    password: str = ROOT_PASSWORD

    @property
    def url(self) -> str:
        return self.server.url

    def add(self, uid: str, mail: str, *aliases: str) -> str:
        return add_person(self.conn, self.base_dn, uid, mail, aliases)

    def remove(self, uid: str) -> None:
        self.conn.delete(f"uid={uid},{self.base_dn}")


@pytest.fixture
def ldap_dir(ldap_server: LdapServer) -> Iterator[LdapBranch]:
    """People of Acme: alice (alias ally, and an x500 value), bob, carol at acme2.test, and one outside Acme."""
    ou = f"t{os.getpid()}x{next(_branches)}"
    base = f"ou={ou},{SUFFIX}"
    conn = ldap_server.admin()
    conn.add(base, ["organizationalUnit"], {"ou": ou})
    branch = LdapBranch(ldap_server, base, conn)
    branch.add("alice", "alice@acme.test", "SMTP:alice@acme.test", "smtp:ally@acme.test", "x500:/o=Acme/cn=alice")
    branch.add("bob", "Bob@Acme.test")
    branch.add("carol", "carol@acme2.test")
    branch.add("mallory", "mallory@elsewhere.example")
    yield branch
    conn.search(base, "(objectClass=*)", ldap3.LEVEL)
    for entry in conn.response or []:
        conn.delete(entry["dn"])
    conn.delete(base)
    conn.unbind()
