"""The embedded servers' URLs and generated passwords: a password is made once, readable by its
owner only, the same for every process that asks (even two at once), and never shown."""

from __future__ import annotations

import stat
import threading

import pytest

from flashsale.urls import (
    PASSWORD_FILE,
    SERVICE_PASSWORD_FILE,
    monitor_url,
    nats_url,
    password,
    postgres_url,
    without_password,
)


def test_urls_carry_the_user_and_password_only_when_there_is_one():
    assert nats_url(4222) == "nats://127.0.0.1:4222"
    assert nats_url(4222, "pw") == "nats://flashsale:pw@127.0.0.1:4222"
    assert postgres_url(5432) == "postgresql://postgres@127.0.0.1:5432/flashsale"
    assert postgres_url(5432, "db", "pw", user="flashsale") == "postgresql://flashsale:pw@127.0.0.1:5432/db"
    assert monitor_url(8222) == "http://127.0.0.1:8222"


@pytest.mark.parametrize("url, shown", [
    ("nats://flashsale:s3cret@127.0.0.1:1", "nats://flashsale:***@127.0.0.1:1"),
    ("nats://u:a@h:1,nats://u:b@h:2", "nats://u:***@h:1,nats://u:***@h:2"),
    ("postgresql://flashsale:p%40ss@h:5432/db", "postgresql://flashsale:***@h:5432/db"),
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
])
def test_a_url_shown_hides_its_password(url, shown):
    assert without_password(url) == shown


def test_a_password_is_made_once_for_its_owner_only(tmp_path):
    secret = password(tmp_path / "nats")
    path = tmp_path / "nats" / PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(secret) >= 32
    assert password(tmp_path / "nats") == secret
    assert password(tmp_path / "nats", SERVICE_PASSWORD_FILE) != secret
    assert sorted(p.name for p in (tmp_path / "nats").iterdir()) == [PASSWORD_FILE, SERVICE_PASSWORD_FILE]


def test_processes_asking_at_once_all_get_the_same_password(tmp_path):
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(password(tmp_path))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 16 and len(set(got)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [PASSWORD_FILE]  # no scratch file left


def test_an_emptied_password_file_is_refused_not_used(tmp_path):
    (tmp_path / PASSWORD_FILE).write_text("\n")
    with pytest.raises(RuntimeError, match="is empty"):
        password(tmp_path)
