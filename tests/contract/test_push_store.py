"""PushStore: the contract of ``alfred_jobs.ports.PushStore``, on the fake and on DynamoDB."""

from __future__ import annotations

from alfred_jobs.domain.push import PushSubscription
from alfred_jobs.ports import PushStore
from tests.contract.support import Backend, uid


def sub(n: int | str, auth: str = "AAAAAAAAAAAAAAAAAAAAAA") -> PushSubscription:
    return PushSubscription(f"https://push.example.com/send/{n}", "BP" + "A" * 85, auth)


def store(backend: Backend) -> PushStore:
    assert backend.deps.push is not None
    return backend.deps.push


def test_a_user_without_subscriptions_has_none(backend: Backend) -> None:
    assert store(backend).list(uid("user")) == []


def test_add_then_list_in_the_order_added_per_user(backend: Backend) -> None:
    s, alice, bob = store(backend), uid("user"), uid("user")
    s.add(alice, sub(1))
    s.add(alice, sub(2))
    s.add(bob, sub(3))
    assert s.list(alice) == [sub(1), sub(2)]
    assert s.list(bob) == [sub(3)]


def test_adding_the_same_endpoint_again_replaces_it(backend: Backend) -> None:
    s, user = store(backend), uid("user")
    s.add(user, sub(1))
    s.add(user, sub(2))
    s.add(user, sub(1, auth="BBBBBBBBBBBBBBBBBBBBBB"))  # the browser's new keys for the same endpoint
    assert s.list(user) == [sub(2), sub(1, auth="BBBBBBBBBBBBBBBBBBBBBB")]


def test_remove_forgets_one_and_is_idempotent(backend: Backend) -> None:
    s, user = store(backend), uid("user")
    s.add(user, sub(1))
    s.add(user, sub(2))
    s.remove(user, sub(1).endpoint)
    s.remove(user, sub(1).endpoint)
    s.remove(user, "https://push.example.com/never-added")
    s.remove(uid("user"), sub(2).endpoint)  # a user with no subscriptions at all
    assert s.list(user) == [sub(2)]


def test_at_most_the_limit_per_user_the_oldest_dropped(backend: Backend) -> None:
    s, user = store(backend), uid("user")
    limit = backend.deps.settings.max_push_subscriptions
    for n in range(limit + 2):
        s.add(user, sub(n))
    assert s.list(user) == [sub(n) for n in range(2, limit + 2)]
    s.add(user, sub(2))  # re-subscribing makes it the newest: the next one drops sub(3)
    s.add(user, sub("new"))
    assert s.list(user) == [*(sub(n) for n in range(4, limit + 2)), sub(2), sub("new")]


def test_endpoints_of_any_characters_are_kept_apart(backend: Backend) -> None:
    s, user = store(backend), uid("user")
    odd = [PushSubscription("https://push.example.com/a.b#c", "BP" + "A" * 85, "A" * 22),
           PushSubscription("https://push.example.com/a.b", "BP" + "A" * 85, "A" * 22),
           PushSubscription("https://push.example.com/" + "x" * 1500, "BP" + "A" * 85, "A" * 22)]
    for o in odd:
        s.add(user, o)
    assert s.list(user) == odd
    s.remove(user, odd[0].endpoint)
    assert s.list(user) == odd[1:]


# ---- an endpoint belongs to one user (issue 26) -------------------------------------------------


def test_an_endpoint_subscribed_by_another_user_moves_to_them(backend: Backend) -> None:
    s, alice, bob = store(backend), uid("user"), uid("user")
    s.add(alice, sub("shared"))
    s.add(alice, sub("alice-phone"))
    # bob signs in on alice's browser: its one endpoint is his now, and no longer hers
    s.add(bob, sub("shared", auth="BBBBBBBBBBBBBBBBBBBBBB"))
    assert s.list(alice) == [sub("alice-phone")]
    assert s.list(bob) == [sub("shared", auth="BBBBBBBBBBBBBBBBBBBBBB")]
    # and back again when alice signs in there once more
    s.add(alice, sub("shared"))
    assert s.list(bob) == []
    assert s.list(alice) == [sub("alice-phone"), sub("shared")]


def test_removing_an_endpoint_that_moved_on_leaves_its_new_owner_alone(backend: Backend) -> None:
    s, alice, bob = store(backend), uid("user"), uid("user")
    s.add(alice, sub("shared"))
    s.add(bob, sub("shared"))
    s.remove(alice, sub("shared").endpoint)  # alice's late unsubscribe (her page signing out)
    assert s.list(bob) == [sub("shared")]
    s.remove(bob, sub("shared").endpoint)
    s.add(alice, sub("shared"))
    assert s.list(alice) == [sub("shared")] and s.list(bob) == []
