# The image the Helm chart runs: every process (`mailward smtp|worker|scheduler|db upgrade`, gunicorn for the web)
# from one image. Build: docker build -t mailward/mailward:0.1.0 .
FROM python:3.11-slim-bookworm

# libmagic for attachment types; tzdata for tenants' digest time zones; spamassassin for its rule files (evaluated
# natively by the ingress) and sa-update.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libmagic1 tzdata spamassassin \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mailward
COPY setup.cfg pyproject.toml README.md ./
COPY app ./app
COPY tenants ./tenants
COPY smtp ./smtp
COPY worker ./worker
COPY mailward ./mailward
COPY migrations ./migrations
RUN pip install --no-cache-dir . gunicorn

# Unprivileged: the chart's listeners use ports above 1024 (the Services map 25 and 587 to them).
RUN useradd --system --uid 10001 --home-dir /nonexistent mailward
USER 10001
ENV MAILWARD_DATA_DIR=/tmp/mailward PYTHONUNBUFFERED=1
CMD ["mailward", "--help"]
