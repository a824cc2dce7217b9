"""Store: organizations, sign-in tokens, messages and account search (migration 4)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from projecthub.store import Store, migrations
from projecthub.store.schema import sign_in_tokens


def test_version_3_database_migrates_to_orgs_and_messages(tmp_path: Path, monkeypatch) -> None:
    old = Store.for_data_dir(tmp_path)
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:3])
    monkeypatch.setattr(migrations, "LATEST_VERSION", 3)
    assert old.migrate() == 3
    owner = old.create_account(first_name="Old")
    assert "organizations" not in inspect(old.engine).get_table_names()
    monkeypatch.undo()
    assert old.migrate() == migrations.LATEST_VERSION >= 4
    org = old.create_org("acme")
    old.add_org_member(org, owner)
    assert old.org_membership(owner) == org
    old.close()


def test_membership_is_one_org_and_never_moved_silently(store: Store) -> None:
    a = store.create_account("Ann", "Lee", "ann@example.org")
    one, two = store.create_org("one"), store.create_org("two")
    store.add_org_member(one, a)
    store.add_org_member(one, a)   # idempotent
    with pytest.raises(ValueError, match="already a member of the organization 'one'"):
        store.add_org_member(two, a)
    with pytest.raises(ValueError, match="already exists"):
        store.create_org("one")
    assert [o["relation"] for o in store.list_orgs(a)] == ["member"]
    store.add_org_admin(two, a)
    assert {o["name"]: o["relation"] for o in store.list_orgs(a)} == {"one": "member", "two": "admin"}
    assert store.get_org("two")["admin_account_ids"] == [a]


def test_token_is_single_use_expires_and_is_stored_hashed(store: Store) -> None:
    a = store.create_account(email="a@example.org")
    token, _ = store.create_sign_in_token(a, a, timedelta(hours=1))
    with store.engine.connect() as conn:
        stored = conn.execute(select(sign_in_tokens.c.token_hash)).scalars().all()
    assert token not in stored and len(stored) == 1
    assert store.redeem_sign_in_token(token) == a
    assert store.redeem_sign_in_token(token) is None
    second, _ = store.create_sign_in_token(a, a, timedelta(hours=1))
    assert store.expire_sign_in_token(second)
    assert store.redeem_sign_in_token(second) is None
    old, _ = store.create_sign_in_token(a, a, timedelta(seconds=-1))
    assert store.redeem_sign_in_token(old) is None
    disabled, _ = store.create_sign_in_token(a, a, timedelta(hours=1))
    store.set_disabled(a, True)
    assert store.redeem_sign_in_token(disabled) is None


def test_concurrent_redemptions_spend_a_token_once(store: Store) -> None:
    a = store.create_account(email="a@example.org")
    token, _ = store.create_sign_in_token(a, a, timedelta(hours=1))
    results: list[str | None] = []
    threads = [threading.Thread(target=lambda: results.append(store.redeem_sign_in_token(token)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(a) == 1 and results.count(None) == 7


def test_share_something_is_a_project_or_an_org(store: Store) -> None:
    a, b, c = (store.create_account(first_name=n) for n in "abc")
    assert not store.accounts_share_something(a, b)
    project = store.create_project(a, title="p")
    store.add_user(project, b)
    assert store.accounts_share_something(a, b)
    store.delete_project(project)
    assert not store.accounts_share_something(a, b)
    org = store.create_org("acme")
    store.add_org_admin(org, a)
    store.add_org_member(org, c)
    assert store.accounts_share_something(a, c) and not store.accounts_share_something(b, c)


def test_message_states_per_account(store: Store) -> None:
    a, b = store.create_account(first_name="a"), store.create_account(first_name="b")
    first = store.send_message(a, [b], "s", "body")
    assert [m["id"] for m in store.list_messages(b, "new", 10, 0)] == [first]
    assert store.list_messages(a, "sent", 10, 0)[0]["read"] is True
    assert store.list_messages(a, "received", 10, 0) == []
    assert store.set_message_flags(b, first, read=True, starred=True)
    assert store.list_messages(b, "new", 10, 0) == []
    assert [m["id"] for m in store.list_messages(b, "starred", 10, 0)] == [first]
    third = store.create_account(first_name="c")
    assert store.get_message_for(third, first) is None
    assert not store.set_message_flags(third, first, read=True)


def test_search_accounts_by_name_word_and_exact_email(store: Store) -> None:
    ann = store.create_account("Ann Marie", "Lee", "ann@example.org")
    store.create_account("Bob", "Annex", "bob@example.org")
    store.create_account("100%", "x_y", "c@example.org")
    assert [r["account_id"] for r in store.search_accounts(terms=["mar"], limit=10)] == [ann]
    assert len(store.search_accounts(terms=["ann"], limit=10)) == 2
    assert len(store.search_accounts(terms=["ann"], limit=1)) == 1
    assert store.search_accounts(terms=["%"], limit=10) == []   # LIKE wildcards are literal
    assert [r["account_id"] for r in store.search_accounts(emails=["ANN@example.org"], limit=10)] == [ann]
    assert store.search_accounts(emails=["ann@example"], limit=10) == []
