"""Real servers the tests (and the benchmarks) start: Redis, PostgreSQL, an SMTP sink, the ingress and other Mailward
processes (``servers``), clamd, slapd, a loopback DNS server, spamd and rspamd (``peers``), and the helpers of the
web tests (``web``: sign-in, forms) and of held mail (``held``). No test lives here:
``bench/`` imports this package without importing a test."""
