"""Eviction policies, driven by scenario scripts and a hypothesis state machine.

Script language (one step per `;`): `put a b:5` (size 1 unless `:n`), `touch a`, `remove a`,
`protect a b` / `unprotect a`, `evict 3 -> b c` (the victims, in order; `-> none` when refused),
`where a -> main` (S3-FIFO only: small | main | ghost | gone), `order -> a b` (held keys).
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvbucket.server.policies import POLICIES, EvictionPolicy, LRUPolicy, S3FIFOPolicy, make_policy


def run(policy: EvictionPolicy, script: str) -> None:
    protected: set[bytes] = set()
    for step in filter(None, (s.strip() for s in script.split(";"))):
        command, _, expect = step.partition("->")
        verb, *args = command.split()
        want = expect.split()
        if verb == "put":
            for arg in args:
                name, _, size = arg.partition(":")
                policy.insert(name.encode(), int(size or 1))
        elif verb == "touch":
            for arg in args:
                policy.touch(arg.encode())
        elif verb == "remove":
            for arg in args:
                policy.remove(arg.encode())
        elif verb == "protect":
            protected.update(a.encode() for a in args)
        elif verb == "unprotect":
            protected.difference_update(a.encode() for a in args)
        elif verb == "evict":
            got = policy.victims(int(args[0]), protected.__contains__)
            shown = ["none"] if got is None else [k.decode() for k in got]
            assert shown == want, f"{step!r}: got {shown}"
        elif verb == "where":
            got = policy.where(args[0].encode()) or "gone"
            assert [got] == want, f"{step!r}: got {got}"
        elif verb == "order":
            got = [k.decode() for k in policy.order()]
            assert got == want, f"{step!r}: got {got}"
        else:
            raise ValueError(f"unknown step {step!r}")


ALL = sorted(POLICIES)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "script",
    [
        "put a b c d; touch a; evict 1 -> b",
        "put a b c d; evict 0 ->",
        "put a b c d; protect b c; touch a; evict 2 -> d a",
        "put a b c d; protect a b c d; evict 1 -> none; order -> a b c d",
        "put a b:5; protect b; evict 2 -> none; evict 1 -> a",
        "put a:3 b:3; remove a; evict 3 -> b; order ->",
        "put a b; remove zz; touch zz; order -> a b",
    ],
)
def test_common_scenarios(name: str, script: str) -> None:
    run(make_policy(name, 100), script)


@pytest.mark.parametrize(
    "script",
    [
        "put a b c d; touch a; evict 1 -> b; order -> c d a",  # a read moves to the back
        "put a b c d; touch a b; evict 2 -> c d",
        "put a b c; put a:4; evict 2 -> b c; order -> a",  # re-insert is an access and a new size
        "put a b c; protect a; evict 2 -> b c; unprotect a; evict 1 -> a",
    ],
)
def test_lru_scenarios(script: str) -> None:
    run(LRUPolicy(100), script)


@pytest.mark.parametrize(
    "script",
    [
        # one-hit wonders leave through small before entries read since admission
        "put a b c d e; touch a c; evict 3 -> b d e; where a -> main; where c -> main; where b -> ghost",
        # entries read once in small survive a scan of new keys
        "put hot; touch hot; put s1 s2 s3 s4; evict 4 -> s1 s2 s3 s4; where hot -> main",
        # a key seen in ghost is re-admitted straight to main
        "put a b; evict 1 -> a; where a -> ghost; put a; where a -> main; where b -> small",
        # main: a read buys another lap (counter spent), an unread entry goes
        "put a b; touch a b; evict 0 ->; put c; evict 1 -> c; evict 1 -> a; where b -> main",
        # protected entries in small are stepped over, then main is used
        "put a b; touch a; evict 1 -> b; put c d; protect c d; evict 1 -> a",
        # a refusal undoes promotions and rotations
        "put a b c; touch a; protect b c; evict 5 -> none; where a -> small; order -> a b c",
        # removed keys are not remembered in ghost
        "put a; remove a; where a -> gone; put a; where a -> small",
    ],
)
def test_s3fifo_scenarios(script: str) -> None:
    run(S3FIFOPolicy(10), script)


def test_s3fifo_counter_is_two_bits() -> None:
    policy = S3FIFOPolicy(10)
    run(policy, "put a; touch a a a a a a")
    assert policy.frequency(b"a") == 3


def test_s3fifo_ghost_is_bounded() -> None:
    policy = S3FIFOPolicy(100)
    for i in range(1000):
        key = f"k{i}".encode()
        policy.insert(key, 1)
        if len(policy) > 100:
            assert policy.victims(1, lambda k: False) is not None
    assert len(policy) <= 100
    assert len(policy.ghost_keys()) <= 90


def test_s3fifo_beats_lru_on_scan_plus_hot_set() -> None:
    """A hot set of 20 read every round, then 15 keys read once; 30 fit. LRU loops and never hits."""
    def hit_ratio(policy: EvictionPolicy) -> float:
        hits = total = 0
        hot = [f"h{i}".encode() for i in range(20)]
        for rnd in range(200):
            for key in hot + [f"s{rnd}-{j}".encode() for j in range(15)]:
                total += 1
                if key in policy:
                    hits += 1
                    policy.touch(key)
                    continue
                policy.insert(key, 1)
                if policy.bytes > policy.capacity_bytes:
                    policy.victims(policy.bytes - policy.capacity_bytes, lambda k: False)
        return hits / total

    s3fifo, lru = hit_ratio(S3FIFOPolicy(30)), hit_ratio(LRUPolicy(30))
    assert lru == 0.0
    assert s3fifo > 0.4


def test_make_policy_registry() -> None:
    assert isinstance(make_policy("lru", 10), LRUPolicy)
    assert isinstance(make_policy("s3fifo", 10), S3FIFOPolicy)
    with pytest.raises(ValueError, match="lru, s3fifo"):
        make_policy("arc", 10)
    with pytest.raises(ValueError):
        make_policy("lru", 0)


KEYS = st.sampled_from([bytes([c]) for c in b"abcdefghij"])


class PolicyMachine(RuleBasedStateMachine):
    """A model dict of key -> size; the policy must agree with it after any sequence of calls."""

    policy_name = "lru"

    def __init__(self) -> None:
        super().__init__()
        self.policy = make_policy(self.policy_name, 50)
        self.model: dict[bytes, int] = {}

    @rule(key=KEYS, size=st.integers(0, 20))
    def insert(self, key: bytes, size: int) -> None:
        self.policy.insert(key, size)
        self.model[key] = size

    @rule(key=KEYS)
    def touch(self, key: bytes) -> None:
        self.policy.touch(key)

    @rule(key=KEYS)
    def remove(self, key: bytes) -> None:
        self.policy.remove(key)
        self.model.pop(key, None)

    @rule(nbytes=st.integers(0, 120), protected=st.sets(KEYS))
    def victims(self, nbytes: int, protected: set[bytes]) -> None:
        before = self._state()
        got = self.policy.victims(nbytes, protected.__contains__)
        available = sum(size for key, size in self.model.items() if key not in protected)
        if got is None:
            assert available < nbytes, "refused although unprotected entries would have sufficed"
            assert self._state() == before, "a refusal changed the policy"
            return
        assert not set(got) & protected
        assert len(set(got)) == len(got)
        assert set(got) <= set(self.model)
        assert sum(self.model[k] for k in got) >= nbytes
        for key in got:
            del self.model[key]
            assert key not in self.policy

    def _state(self) -> tuple:
        p = self.policy
        if isinstance(p, S3FIFOPolicy):
            return (p.order(), dict(p._freq), p.ghost_keys(), p._small_bytes, p._main_bytes, p.bytes)
        return (p.order(), p.bytes)

    @invariant()
    def sizes_consistent(self) -> None:
        assert len(self.policy) == len(self.model)
        assert self.policy.bytes == sum(self.model.values())
        assert sorted(self.policy.order()) == sorted(self.model)
        if isinstance(self.policy, S3FIFOPolicy):
            p = self.policy
            assert p._small_bytes == sum(p._small.values())
            assert p._main_bytes == sum(p._main.values())
            assert p._ghost_bytes == sum(p._ghost.values())
            assert not set(p._ghost) & set(self.model)
            assert all(0 <= f <= 3 for f in p._freq.values())


class S3FIFOMachine(PolicyMachine):
    policy_name = "s3fifo"


TestLRUMachine = PolicyMachine.TestCase
TestS3FIFOMachine = S3FIFOMachine.TestCase
TestLRUMachine.settings = TestS3FIFOMachine.settings = settings(max_examples=150, stateful_step_count=40,
                                                               deadline=None)
