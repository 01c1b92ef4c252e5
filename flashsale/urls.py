"""How a process reaches the embedded servers: their URLs, the users they know, and the
passwords generated into their data directories.

Neither embedded server takes anonymous clients: each has a password generated into its data
directory on first use (`password`, a 0600 file, the same on every later run), and the URLs every
process gets carry it (nats://flashsale:<password>@..., postgresql://flashsale:<password>@...).
Postgres has two roles: the superuser `postgres`, for schema changes and resharding only, and the
service role `flashsale` the processes connect as (no superuser, owns nothing; committer/schema.py
grants it the tables it reads and writes). A URL shown on a terminal or in a log goes through
`without_password`.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

NATS_USER = "flashsale"  # the one client user of the embedded nats-server
PG_SUPERUSER = "postgres"  # schema changes and resharding only (`flashsale schema`, `dev`)
PG_SERVICE_ROLE = "flashsale"  # the role every flashsale process connects as
PASSWORD_FILE = "password"  # in each server's data directory: the superuser's, for postgres
SERVICE_PASSWORD_FILE = "service-password"  # the service role's, in the postgres data directory
PASSWORD_BYTES = 24  # of randomness in a generated password (32 URL-safe characters)

_URL_PASSWORD = re.compile(r"(//[^:/@,]*):[^@/]*@")


def nats_url(port: int, password: str = "") -> str:
    """password "": a URL without credentials (for a server that asks for none)."""
    user = f"{NATS_USER}:{password}@" if password else ""
    return f"nats://{user}127.0.0.1:{port}"


def monitor_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def postgres_url(port: int, database: str = "flashsale", password: str = "",
                 user: str = PG_SUPERUSER) -> str:
    secret = f":{password}" if password else ""
    return f"postgresql://{user}{secret}@127.0.0.1:{port}/{database}"


def without_password(url: str) -> str:
    """A URL (or a comma-separated list of them) fit for a terminal or a log line."""
    return _URL_PASSWORD.sub(r"\1:***@", url)


def password(data_dir: Path, name: str = PASSWORD_FILE) -> str:
    """A password of the embedded server whose data directory this is (`name`: its superuser's,
    or SERVICE_PASSWORD_FILE): generated on first use (random, URL-safe, in a file only its owner
    may read), read back on every later run. Whoever comes first creates it (`flashsale dev`
    before the servers it supervises, or `start_*`)."""
    path = Path(data_dir) / name
    try:
        return _stored_password(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under another name, then linked into place: a second process creating it at
    # the same moment never reads a half-written file, and the first link wins for both.
    scratch = path.with_name(f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(PASSWORD_BYTES) + "\n")
        out.flush()
        os.fsync(out.fileno())
    try:
        os.link(scratch, path)
    except FileExistsError:
        pass
    finally:
        scratch.unlink()
    return _stored_password(path)


def _stored_password(path: Path) -> str:
    secret = path.read_text().strip()
    if not secret:  # an empty password would mean URLs without credentials: never silently
        raise RuntimeError(f"{path} is empty: delete it, and a new password is generated")
    return secret
