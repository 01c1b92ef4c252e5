"""Postgres plumbing without a server: identifiers quoted so that no name can end the quote, the
role a URL connects as, and the maintenance URL that keeps every host and parameter."""

from __future__ import annotations

import pytest

from flashsale.db import quote_ident, split_database_url, user_of


@pytest.mark.parametrize(("name", "quoted"), [
    ("flashsale", '"flashsale"'),
    ('x"; DROP DATABASE y; --', '"x""; DROP DATABASE y; --"'),
    ("Mixed Case", '"Mixed Case"'),
])
def test_an_identifier_is_quoted_and_its_quotes_doubled(name, quoted):
    assert quote_ident(name) == quoted


def test_the_role_a_url_connects_as():
    assert user_of("postgresql://flashsale:pw@127.0.0.1:15432/flashsale") == "flashsale"
    assert user_of("postgresql://us%40er:pw@h/db") == "us@er"
    assert user_of("postgresql://127.0.0.1/db") == ""


def test_the_maintenance_url_keeps_hosts_and_parameters():
    name, maintenance = split_database_url(
        "postgresql://u:p@h1:5432,h2:5433/shop%20db?target_session_attrs=primary&sslmode=verify-full")
    assert name == "shop db"
    assert maintenance == ("postgresql://u:p@h1:5432,h2:5433/postgres"
                           "?target_session_attrs=primary&sslmode=verify-full")
