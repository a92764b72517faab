"""Configuration is parsed once at start; a bad value stops the process with the variable's name and why."""

from __future__ import annotations

import pytest

from smtp.checks import build_checks
from tenants.exceptions import ConfigError
from tenants.platform.config import Config
from tests.support.servers import run_cli


@pytest.mark.parametrize(("name", "value"), [
    ("MAILWARD_SMTP_LISTEN", "localhost:99999"),
    ("MAILWARD_DNS", "resolver.example:53"),
    ("MAILWARD_MAX_MESSAGE_SIZE", "-1"),
    ("MAILWARD_RETRY_SCHEDULE", "60,soon"),
    ("MAILWARD_REDIS_URL", "memcached://x"),
    ("MAILWARD_RSPAMD", "rspamd.example:11333"),
    ("MAILWARD_PUBLIC_URL", "mail.example.net"),
    ("MAILWARD_LOG_LEVEL", "LOUD"),
    ("MAILWARD_SHARED_LEARNING_MIN_TENANTS", "1"),  # one tenant alone must never reach the shared model
    ("MAILWARD_SMTP_PROCESSES", "0"),  # unset means one per core; an explicit value counts processes
    ("MAILWARD_SMTP_PROCESSES", "-1"),
    ("MAILWARD_SMTP_PROCESSES", "abc"),
])
def test_bad_value_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env({name: value})


def test_bad_dnsbl_zones_stop_the_ingress_at_start(env, cfg) -> None:
    with pytest.raises(ConfigError, match="MAILWARD_DNSBL_ZONES"):
        build_checks(Config.from_env({**env, "MAILWARD_DNSBL_ZONES": "ip:bad"}))
    result = run_cli(["smtp"], {**env, "MAILWARD_DNSBL_ZONES": "ip:bad"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("mailward: error: MAILWARD_DNSBL_ZONES:")


def test_public_url_drives_links_and_defaults_to_the_web_listener() -> None:
    assert Config.from_env({"MAILWARD_PUBLIC_URL": "https://mail.example.net/"}).web_url == "https://mail.example.net"
    assert Config.from_env({"MAILWARD_WEB_LISTEN": "127.0.0.1:8111"}).web_url == "http://127.0.0.1:8111"
