"""Configuration: defaults, then ``MAILWARD_*`` environment variables, parsed and validated once.

Nothing else in Mailward reads ``os.environ``. A bad value raises :class:`ConfigError` naming the variable,
and every process turns that into one line on stderr and a non-zero exit at start.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tenants.exceptions import ConfigError

PREFIX = "MAILWARD_"
#: Most reverse-proxy hops MAILWARD_TRUSTED_PROXIES may name (more is a typo, not a deployment).
MAX_PROXY_HOPS = 5


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_hostport(value: str, *, default_port: int | None = None) -> HostPort:
    """Parse ``host:port`` or ``[v6]:port``; raises ValueError with a readable message."""
    value = value.strip()
    if not value:
        raise ValueError("empty address")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port_s = value.split(":")
    elif value.count(":") == 0:
        host, port_s = value, ""
    else:
        raise ValueError(f"{value!r}: write IPv6 addresses as [addr]:port")
    if not port_s:
        if default_port is None:
            raise ValueError(f"{value!r} has no port (host:port)")
        port_s = str(default_port)
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 0 to 65535")
    if not host:
        raise ValueError(f"{value!r} has no host")
    return HostPort(host, int(port_s))


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean (use true/false)")


def _positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise ValueError(f"{value!r} must be a positive whole number")
    return n


def _at_least(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        n = int(value)
        if n < low:
            raise ValueError(f"{value!r} must be a whole number, {low} or more")
        return n
    return parse


def _non_negative_int(value: str) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"{value!r} must be a whole number, 0 or more")
    return n


def _count(value: str) -> int:
    n = int(value)
    if not 0 <= n <= MAX_PROXY_HOPS:
        raise ValueError(f"{value!r} must be a whole number from 0 to {MAX_PROXY_HOPS}")
    return n


def _positive_float(value: str) -> float:
    n = float(value)
    if n <= 0:
        raise ValueError(f"{value!r} must be a positive number")
    return n


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        scheme = value.split(":", 1)[0].split("+", 1)[0]
        if "://" not in value or scheme not in schemes:
            raise ValueError(f"{value!r} is not a URL of scheme {'/'.join(schemes)}")
        return value

    return parse


def _existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"{value!r}: no such file")
    return value


def _duration_list(value: str) -> tuple[int, ...]:
    items = tuple(int(x) for x in value.replace(" ", "").split(",") if x)
    if not items or any(i <= 0 for i in items):
        raise ValueError(f"{value!r} must be a comma-separated list of positive seconds")
    return items


#: Ports a tenant's transport (and the call-ahead to it) may use unless MAILWARD_TENANT_SMTP_PORTS says otherwise:
#: SMTP, submissions, submission and the common alternative.
DEFAULT_TENANT_SMTP_PORTS = frozenset({25, 465, 587, 2525})
#: Ports a tenant's LDAP directory may use unless MAILWARD_TENANT_LDAP_PORTS says otherwise: LDAP and LDAPS.
DEFAULT_TENANT_LDAP_PORTS = frozenset({389, 636})


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated CIDR networks (a bare address is a one-address network)."""
    out = []
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a CIDR network (e.g. 10.20.0.0/16,fd12:3456::/48): {exc}") from None
    return tuple(out)


def _ports(value: str) -> frozenset[int]:
    """Comma-separated ports and ranges, e.g. ``25,587,2500-2599``."""
    ports: set[int] = set()
    for item in (x.strip() for x in value.split(",")):
        if not item:
            continue
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"{item!r} is not a port or a range of ports (write e.g. 25,587,2500-2599)")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{item!r}: ports are 1 to 65535, a range low-high")
        ports.update(range(first, last + 1))
    if not ports:
        raise ValueError(f"{value!r} names no port")
    return frozenset(ports)


@dataclass(frozen=True)
class Config:
    """Every setting a Mailward process reads. Build with :meth:`from_env`."""

    data_dir: Path = Path("var")
    database_url: str = ""
    redis_url: str = ""
    smtp_listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 2525))
    web_listen: HostPort = field(default_factory=lambda: HostPort("127.0.0.1", 8025))
    hostname: str = field(default_factory=socket.getfqdn)
    secret_key: str = ""
    admin_email: str = "admin@localhost"
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Largest message accepted at DATA, in bytes (SIZE in EHLO).
    max_message_size: int = 50 * 1024 * 1024
    #: Most recipients in one SMTP transaction.
    max_recipients: int = 500
    #: Most SMTP connections one client (an IPv4 address, an IPv6 /64) may hold open at once; more get 421.
    #: Counted per ingress process, like the global cap below (see smtp_processes).
    smtp_max_connections_per_ip: int = 20
    #: Most SMTP connections one ingress process holds open at once (port 25 and submission together); more get 421.
    #: 0: derived from the open-file limit, keeping room for what the ingress opens itself (see smtp/limits.py).
    smtp_max_connections: int = 0
    #: Ingress processes ``mailward smtp`` runs on one port (SO_REUSEPORT), each with its own connection caps above;
    #: 0: one per core this process may run on. 1 runs the ingress in the process itself (see smtp/supervisor.py).
    smtp_processes: int = 0
    #: Seconds a new client has for its first command (its HELO/EHLO); then the idle timeout applies.
    smtp_greeting_timeout: float = 30.0
    #: Seconds a client may stay silent (between commands, or while it sends DATA) before the ingress hangs up.
    smtp_idle_timeout: float = 60.0
    #: Seconds a claim on a delivery row lasts before the sweeper may take it over (a crashed process's rows).
    delivery_lease: int = 300
    #: Retry schedule in seconds after the first failed attempt; the last step repeats until the queue lifetime ends.
    retry_schedule: tuple[int, ...] = (60, 300, 900, 1800, 3600)
    #: Seconds a mail may wait in the queue before it bounces.
    queue_lifetime: int = 5 * 24 * 3600
    #: Seconds between two runs of the delivery sweeper in the scheduler.
    sweep_interval: float = 30.0
    #: Timeout in seconds of every outbound SMTP conversation step.
    smtp_timeout: float = 60.0
    #: Idle seconds after which a pooled downstream connection is closed.
    pool_idle: float = 30.0
    #: Smart host for mail to domains no tenant owns (bounces and outbound mail); unset: MX lookup.
    relayhost: HostPort | None = None
    #: Resolver for MX and checks, host:port; unset: the system resolver.
    dns: HostPort | None = None
    #: ClamAV clamd address (host:port or a unix socket path); unset: virus scanning off.
    clamd: str | None = None
    #: DNSBL/URIBL zones, ``KIND:ZONE=CODES:SYMBOL[:reject],...;...`` (see smtp/checks/dnsbl.py); unset: the shipped
    #: zones; ``none``: no lists.
    dnsbl_zones: str | None = None
    #: Optional extra scorers: SpamAssassin spamd (host:port) and rspamd (its HTTP URL); unset: off.
    spamd: str | None = None
    rspamd: str | None = None
    #: The web address people reach (digest links, portal links), e.g. https://mail.example.net; unset: the web
    #: listen address.
    public_url: str | None = None
    #: Sender of bounces and notifications.
    postmaster: str = ""
    log_level: str = "INFO"
    #: Address of the submission listener (SMTP AUTH after STARTTLS, for tenants' outbound mail); unset: off.
    submission_listen: HostPort | None = None
    #: Secret the DKIM private keys are encrypted with; unset: derived from the secret key.
    dkim_key_secret: str = ""
    #: Reverse proxies in front of the web process whose X-Forwarded-For/-Proto/-Host are believed (0: none). Set it
    #: to the number of proxy hops (1 behind one ingress controller) so that the per-IP sign-in limit, the audit log
    #: and Secure cookies see the client rather than the proxy; never higher than the real number of hops.
    trusted_proxies: int = 0
    #: Seconds a web sign-in lasts at most, however active it is (the idle limit of 8 hours ends it sooner).
    session_max_age: int = 12 * 3600
    #: Seconds a password-reset link works (it also stops once a password is set: see tenants/accounts.py).
    reset_link_max_age: int = 24 * 3600
    #: Seconds an invitation link (a new user sets their first password) works.
    invite_link_max_age: int = 7 * 24 * 3600
    #: Password of the Redis in MAILWARD_REDIS_URL when the URL carries none (MAILWARD_REDIS_PASSWORD_FILE for a
    #: mounted Secret); every process, the rate limiter included, uses it through :attr:`effective_redis_url`.
    redis_password: str = ""
    #: Networks that tenant-supplied endpoints (transport, call-ahead, LDAP directory) may reach although the egress
    #: policy refuses them (:mod:`tenants.egress`), e.g. the MSP's network where tenants' servers live. Empty: none.
    tenant_egress_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: Ports a tenant's transport and call-ahead may use.
    tenant_smtp_ports: frozenset[int] = DEFAULT_TENANT_SMTP_PORTS
    #: Ports a tenant's LDAP directory may use.
    tenant_ldap_ports: frozenset[int] = DEFAULT_TENANT_LDAP_PORTS
    #: Distinct tenants that must report a mail alike (and none the other way) before it reaches the MSP's shared
    #: content model; only tenants that opted in to sharing count (see tenants/learning.py). At least 2.
    shared_learning_min_tenants: int = 3
    #: SpamAssassin's rule directory evaluated by the native rule engine (smtp/sarules); unset: found automatically
    #: (the newest sa-update directory, else Debian's /usr/share/spamassassin); ``none``: SpamAssassin's rules off.
    sa_rules_dir: str | None = None
    #: Address of the per-process metrics endpoint of the ingress and the worker (Prometheus text, see
    #: tenants/metrics.py): a port (all interfaces) or host:port; unset or port 0: off. Several ingress processes
    #: share it: their supervisor serves their merged values.
    metrics_listen: HostPort | None = None
    #: Bearer token that opens the web's /metrics (MAILWARD_METRICS_TOKEN_FILE for a mounted Secret); empty: no token.
    metrics_token: str = ""
    #: Networks whose clients read the web's /metrics without a token (e.g. the Prometheus pods). With neither this
    #: nor a token, /metrics answers 404 to everyone.
    metrics_allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: Key file of the daily encrypted backup (32 random bytes, raw, hex or base64: ``mailward backup keygen``);
    #: unset: no scheduled backups. MAILWARD_BACKUP_MASTER_KEY_FILE: an MSP master key that also opens them.
    backup_key_file: Path | None = None
    backup_master_key_file: Path | None = None
    #: Where scheduled backups and their status files go; unset: ``<data_dir>/backups``.
    backup_dir: Path | None = None
    #: Scheduled backups kept; older ones are deleted after each new one.
    backup_keep: int = 7

    @property
    def effective_backup_dir(self) -> Path:
        return self.backup_dir or self.data_dir / "backups"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "mailward.db"

    @property
    def private_redis_socket(self) -> Path:
        return self.data_dir / "valkey" / "valkey.sock"

    @property
    def uses_private_redis(self) -> bool:
        return not self.redis_url

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path.resolve()}"

    @property
    def effective_redis_url(self) -> str:
        """The Redis URL every client uses, with MAILWARD_REDIS_PASSWORD put into it (URL-quoted) when set."""
        url = self.redis_url or f"unix://{self.private_redis_socket.resolve()}"
        if not self.redis_password:
            return url
        scheme, _, rest = url.partition("://")
        user = rest.partition("@")[0] if "@" in rest.partition("/")[0] else ""
        host_part = rest[len(user) + 1:] if user else rest
        return f"{scheme}://{user}:{quote(self.redis_password, safe='')}@{host_part}"

    @property
    def web_url(self) -> str:
        """Base URL of the web process as people reach it (no trailing slash)."""
        return self.public_url or f"http://{self.web_listen}"

    @property
    def bounce_sender(self) -> str:
        return self.postmaster or f"postmaster@{self.hostname}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}

        def read(name: str, parse: Callable[[str], Any], attr: str | None = None) -> None:
            key = PREFIX + name
            raw = env.get(key)
            file_key = key + "_FILE"
            if raw is None and env.get(file_key):
                try:
                    raw = Path(env[file_key]).read_text().strip()
                except OSError as exc:
                    raise ConfigError(f"{file_key}: cannot read {env[file_key]!r}: {exc.strerror}") from exc
            if raw is None or raw == "":
                return
            try:
                values[attr or name.lower()] = parse(raw)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{key}: {exc}") from exc

        read("DATA_DIR", Path)
        read("DATABASE_URL", _url(("sqlite", "postgresql", "postgres")))
        read("REDIS_URL", _url(("redis", "rediss", "unix")))
        read("SMTP_LISTEN", parse_hostport)
        read("WEB_LISTEN", parse_hostport)
        read("HOSTNAME", _hostname)
        read("SECRET_KEY", str)
        read("ADMIN_EMAIL", _email)
        read("TLS_CERT", _existing_file)
        read("TLS_KEY", _existing_file)
        read("MAX_MESSAGE_SIZE", _positive_int)
        read("MAX_RECIPIENTS", _positive_int)
        read("SMTP_MAX_CONNECTIONS_PER_IP", _positive_int)
        read("SMTP_MAX_CONNECTIONS", _non_negative_int)
        read("SMTP_PROCESSES", _positive_int)
        read("SMTP_GREETING_TIMEOUT", _positive_float)
        read("SMTP_IDLE_TIMEOUT", _positive_float)
        read("DELIVERY_LEASE", _positive_int)
        read("RETRY_SCHEDULE", _duration_list)
        read("QUEUE_LIFETIME", _positive_int)
        read("SWEEP_INTERVAL", _positive_float)
        read("SMTP_TIMEOUT", _positive_float)
        read("POOL_IDLE", _positive_float)
        read("RELAYHOST", lambda v: parse_hostport(v, default_port=25))
        read("DNS", lambda v: _ip_hostport(parse_hostport(v, default_port=53)))
        read("CLAMD", str)
        read("DNSBL_ZONES", str)
        read("SPAMD", lambda v: str(parse_hostport(v, default_port=783)))
        read("RSPAMD", _url(("http", "https")))
        read("PUBLIC_URL", lambda v: _url(("http", "https"))(v).rstrip("/"))
        read("POSTMASTER", _email)
        read("LOG_LEVEL", _log_level)
        read("SUBMISSION_LISTEN", parse_hostport)
        read("DKIM_KEY_SECRET", str)
        read("TRUSTED_PROXIES", _count)
        read("SESSION_MAX_AGE", _positive_int)
        read("RESET_LINK_MAX_AGE", _positive_int)
        read("INVITE_LINK_MAX_AGE", _positive_int)
        read("REDIS_PASSWORD", str)
        read("TENANT_EGRESS_ALLOW", _networks)
        read("TENANT_SMTP_PORTS", _ports)
        read("TENANT_LDAP_PORTS", _ports)
        read("SA_RULES_DIR", _sa_rules_dir)
        read("SHARED_LEARNING_MIN_TENANTS", _at_least(2))
        read("METRICS_PORT", _metrics_listen, "metrics_listen")
        read("METRICS_TOKEN", _token, "metrics_token")
        read("METRICS_ALLOW", _networks, "metrics_allow")
        read("BACKUP_KEY_FILE", _backup_key_file)
        read("BACKUP_MASTER_KEY_FILE", _backup_key_file)
        read("BACKUP_DIR", Path)
        read("BACKUP_KEEP", _positive_int)
        cfg = cls(**values)
        if bool(cfg.tls_cert) != bool(cfg.tls_key):
            raise ConfigError("MAILWARD_TLS_CERT and MAILWARD_TLS_KEY: set both or neither")
        cfg.check_submission()
        cfg.check_redis_password()
        cfg.check_backup_keys()
        return cfg

    def check_backup_keys(self) -> None:
        """A backup key is never kept beside the backups it opens (whoever takes the backups would have it too)."""
        for name, key in (("BACKUP_KEY_FILE", self.backup_key_file),
                          ("BACKUP_MASTER_KEY_FILE", self.backup_master_key_file)):
            if key is not None and key.resolve().parent == self.effective_backup_dir.resolve():
                raise ConfigError(f"{PREFIX}{name}: the key is in the backup directory {self.effective_backup_dir}; "
                                  "keep it elsewhere")

    def check_redis_password(self) -> None:
        """A password goes with a configured Redis, and in one place only (the URL or MAILWARD_REDIS_PASSWORD)."""
        if not self.redis_password:
            return
        if not self.redis_url:
            raise ConfigError("MAILWARD_REDIS_PASSWORD needs MAILWARD_REDIS_URL (the private Valkey has no password)")
        userinfo, at, _ = self.redis_url.partition("://")[2].partition("/")[0].rpartition("@")
        if at and ":" in userinfo:
            raise ConfigError("MAILWARD_REDIS_PASSWORD: MAILWARD_REDIS_URL already carries a password; "
                              "set it in one place")

    def check_submission(self) -> None:
        """The submission listener needs a certificate (AUTH only after STARTTLS) and an address of its own."""
        if self.submission_listen is None:
            return
        if not self.tls_cert or not self.tls_key:
            raise ConfigError("MAILWARD_SUBMISSION_LISTEN needs MAILWARD_TLS_CERT and MAILWARD_TLS_KEY: "
                              "clients must STARTTLS before they may AUTH")
        if self.submission_listen == self.smtp_listen:
            raise ConfigError(f"MAILWARD_SUBMISSION_LISTEN: {self.submission_listen} is already "
                              "MAILWARD_SMTP_LISTEN; give the submission listener its own port")

    def resolve_secret_key(self) -> str:
        """The configured secret key, or one generated once and kept under the data directory."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if not path.exists():
            # the owner's alone, as tenants.platform.db keeps it
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(os.urandom(32).hex())
        return path.read_text().strip()


def _hostname(value: str) -> str:
    labels = value.rstrip(".").split(".")
    if not all(lbl and len(lbl) <= 63 and lbl.replace("-", "").isalnum() for lbl in labels):
        raise ValueError(f"{value!r} is not a valid host name")
    return value.rstrip(".").lower()


def _email(value: str) -> str:
    local, sep, domain = value.rpartition("@")
    if not sep or not local or not domain:
        raise ValueError(f"{value!r} is not an e-mail address")
    return value


def _ip_hostport(hp: HostPort) -> HostPort:
    ipaddress.ip_address(hp.host)
    return hp


def _sa_rules_dir(value: str) -> str:
    """``none`` (off) or a directory; a path that exists but is a file is a mistake worth stopping for."""
    if value.strip().lower() == "none":
        return "none"
    if Path(value).exists() and not Path(value).is_dir():
        raise ValueError(f"{value!r} is a file, not a directory of SpamAssassin rule files (or 'none')")
    return value


#: Shortest bearer token accepted for the web's /metrics (a guessable token would open it to anyone).
MIN_TOKEN_LENGTH = 16


def _token(value: str) -> str:
    if len(value) < MIN_TOKEN_LENGTH or any(c.isspace() for c in value):
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters without spaces (e.g. openssl rand -hex 24)")
    return value


def _metrics_listen(value: str) -> HostPort | None:
    """A port (every interface) or host:port; port 0 turns the endpoint off (None)."""
    hp = HostPort("0.0.0.0", int(value)) if value.strip().isdigit() else parse_hostport(value)
    if not 0 <= hp.port <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 0 to 65535")
    return hp if hp.port else None


def _backup_key_file(value: str) -> Path:
    """A key file that exists, is readable and holds a 32-byte key (checked at start, not at the first backup)."""
    from tenants.backup_format import read_key_file

    read_key_file(value)  # a BackupKeyError is a ValueError: the message gets the variable's name
    return Path(value)


def _log_level(value: str) -> str:
    v = value.upper()
    if v not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return v


_config: Config | None = None


def get_config() -> Config:
    """The process-wide configuration, read from the environment on first use."""
    global _config
    if _config is None:
        _config = Config.from_env()
    return _config


def set_config(cfg: Config | None) -> None:
    """Replace the process-wide configuration (tests, and the CLI after it parsed its options)."""
    global _config
    _config = cfg
