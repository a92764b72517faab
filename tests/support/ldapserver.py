"""A real OpenLDAP slapd for the directory tests, on a free loopback port with its data in a temporary folder.

Static configuration (no cn=config), the mdb backend, suffix ``dc=acme,dc=test`` and a root DN with a password.
Besides the stock schemas it defines ``proxyAddresses`` (as Active Directory has it: ``SMTP:``/``smtp:`` prefixed
values) on an auxiliary class, so the tests can give people an alias the way tenants' directories do.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import ldap3

from tests.support.servers import Daemon, free_port, port_open, wait_started

SLAPD = Path("/usr/sbin/slapd")
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
SUFFIX = "dc=acme,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "secret"
#: Seconds slapd may take to open its port.
START_TIMEOUT = 20.0
#: A made-up OID arc for the test schema (never used outside these tests).
_TEST_SCHEMA = """
attributetype ( 1.3.6.1.4.1.99999.1.1 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.99999.2.1 NAME 'mailwardTestMailbox' SUP top AUXILIARY
  MAY ( proxyAddresses ) )
"""


@dataclass
class LdapServer(Daemon):
    LOG: ClassVar[str] = "slapd.log"
    STOP_SIGNAL: ClassVar[int] = signal.SIGINT  # slapd shuts down cleanly on SIGINT/SIGTERM
    STOP_TIMEOUT: ClassVar[float] = 10.0

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def admin(self) -> ldap3.Connection:
        """A connection bound as the root DN (to add and remove entries)."""
        return ldap3.Connection(ldap3.Server(self.url, get_info=ldap3.NONE), ROOT_DN, ROOT_PASSWORD,
                                auto_bind=True, raise_exceptions=True)



def start_slapd() -> LdapServer:
    """Start slapd in the foreground (``-d 0``) and create the suffix entry; raises with its log if it cannot."""
    if not SLAPD.exists():
        raise FileNotFoundError(f"{SLAPD} is not installed (apt-get install slapd ldap-utils)")
    workdir = Path(tempfile.mkdtemp(prefix="mw-slapd-"))
    (workdir / "db").mkdir()
    (workdir / "mailward-test.schema").write_text(_TEST_SCHEMA)
    includes = "\n".join(f"include {SCHEMA_DIR / n}.schema" for n in ("core", "cosine", "inetorgperson", "nis"))
    (workdir / "slapd.conf").write_text(f"""{includes}
include {workdir / "mailward-test.schema"}
pidfile {workdir / "slapd.pid"}
modulepath {MODULE_DIR}
moduleload back_mdb
database mdb
maxsize 104857600
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {workdir / "db"}
""")
    port = free_port()
    log = open(workdir / "slapd.log", "wb")  # noqa: SIM115 - lives as long as the child
    proc = subprocess.Popen([str(SLAPD), "-f", str(workdir / "slapd.conf"), "-h", f"ldap://127.0.0.1:{port}/",
                             "-d", "0"], stdout=log, stderr=subprocess.STDOUT)
    server = LdapServer(proc, workdir, port)
    wait_started(server, lambda: port_open(port), timeout=START_TIMEOUT, name="slapd", request="on its port",
                 interval=0.05)
    try:
        conn = server.admin()
        conn.add(SUFFIX, ["dcObject", "organization"], {"dc": "acme", "o": "Acme"})
        conn.unbind()
    except BaseException:
        text = server.log()
        server.stop()
        raise RuntimeError(f"slapd did not start: {text[-2000:]}") from None
    return server


def add_person(conn: ldap3.Connection, base: str, uid: str, mail: str, aliases: tuple[str, ...] = (),
               password: str | None = None) -> str:
    """Add an inetOrgPerson ``uid=...`` under ``base`` with a mail address and ``proxyAddresses`` aliases."""
    dn = f"uid={uid},{base}"
    attrs: dict[str, object] = {"cn": uid, "sn": uid, "uid": uid, "mail": mail}
    classes = ["inetOrgPerson"]
    if aliases:
        classes.append("mailwardTestMailbox")
        attrs["proxyAddresses"] = list(aliases)
    if password is not None:
        attrs["userPassword"] = password
    conn.add(dn, classes, attrs)
    return dn
