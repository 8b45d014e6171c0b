"""The NLM lock table: POSIX range semantics per owner, conflicts, waiters in order, shares, freeing a host."""

import random

from hypothesis import given, strategies as st

from nfsstack.nlm.locks import END, Lock, LockTable, Owner, Status, ranges

A = Owner("client-a", 1, b"1@a")
A2 = Owner("client-a", 2, b"2@a")
B = Owner("client-b", 7, b"7@b")
F = ("dev", 1)


def held(table, owner=None, key=F):
    files = table.files.get(key)
    return ranges(lk for lk in (files.granted if files else []) if owner is None or lk.owner == owner)


def test_lengths_and_the_end_of_file():
    assert Lock.of(A, 10, 0, True).end == END and Lock.of(A, 10, 0, True).length == 0
    assert Lock.of(A, 10, 5, True).end == 14 and Lock.of(A, 10, 5, True).length == 5
    assert Lock.of(A, END - 1, 100, False).end == END


def test_shared_locks_coexist_exclusive_ones_do_not():
    t = LockTable()
    assert t.lock(F, Lock.of(A, 0, 100, False)).status == Status.GRANTED
    assert t.lock(F, Lock.of(B, 50, 100, False)).status == Status.GRANTED
    out = t.lock(F, Lock.of(B, 90, 5, True))
    assert out.status == Status.DENIED and out.holder.owner == A
    assert t.test(F, Lock.of(B, 200, 5, True)) is None
    assert t.test(F, Lock.of(A2, 0, 1, True)).owner == A, "another process of the same host is another owner"


def test_overlapping_ranges_of_one_owner_merge_and_split():
    t = LockTable()
    t.lock(F, Lock.of(A, 0, 10, True))
    t.lock(F, Lock.of(A, 10, 10, True))
    assert held(t) == [(0, 19, True)], "adjacent ranges of one kind merge"
    t.unlock(F, A, 5, 9)
    assert held(t) == [(0, 4, True), (10, 19, True)], "a partial unlock splits"
    t.unlock(F, A, 0, END)
    assert held(t) == [] and F not in t.files


def test_upgrade_and_downgrade_in_place():
    t = LockTable()
    t.lock(F, Lock.of(A, 0, 100, False))
    assert t.lock(F, Lock.of(A, 20, 10, True)).status == Status.GRANTED
    assert held(t) == [(0, 19, False), (20, 29, True), (30, 99, False)]
    t.lock(F, Lock.of(A, 0, 100, False))
    assert held(t) == [(0, 99, False)], "a downgrade over the whole range joins it again"
    t.lock(F, Lock.of(B, 50, 10, False))
    out = t.lock(F, Lock.of(A, 0, 100, True))
    assert out.status == Status.DENIED and out.holder.owner == B
    assert held(t, A) == [(0, 99, False)], "a refused upgrade leaves the shared lock as it was"


def test_blocked_waiters_are_granted_in_order():
    t = LockTable()
    C = Owner("client-c", 3)
    t.lock(F, Lock.of(A, 0, 0, True))
    assert t.lock(F, Lock.of(B, 0, 10, True), block=True, data="b").status == Status.BLOCKED
    assert t.lock(F, Lock.of(C, 5, 10, True), block=True, data="c").status == Status.BLOCKED
    assert t.lock(F, Lock.of(B, 0, 10, True), block=True, data="b again").status == Status.BLOCKED
    assert len(t.files[F].waiters) == 2, "a re-polled request is the same waiter"
    granted = t.unlock(F, A, 0, END)
    assert [w.data for w in granted] == ["b again"], "B came first; C still conflicts with B"
    granted = t.unlock(F, B, 0, END)
    assert [w.data for w in granted] == ["c"]
    assert held(t) == [(5, 14, True)]


def test_non_conflicting_later_waiters_are_not_held_up():
    t = LockTable()
    C = Owner("client-c", 3)
    t.lock(F, Lock.of(A, 0, 0, True))
    t.lock(F, Lock.of(B, 0, 10, True), block=True, data="b")
    t.lock(F, Lock.of(C, 20, 10, True), block=True, data="c")
    granted = t.unlock(F, A, 0, END)
    assert [w.data for w in granted] == ["b", "c"]


def test_cancel_of_a_waiter():
    t = LockTable()
    t.lock(F, Lock.of(A, 0, 10, True))
    t.lock(F, Lock.of(B, 0, 10, True), block=True)
    assert t.cancel(F, Lock.of(B, 0, 10, True))
    assert not t.cancel(F, Lock.of(B, 0, 10, True))
    assert t.unlock(F, A, 0, END) == [] and F not in t.files


def test_a_repolled_lock_the_owner_already_holds_is_granted():
    t = LockTable()
    t.lock(F, Lock.of(A, 0, 10, True))
    assert t.lock(F, Lock.of(A, 0, 10, True), block=True).status == Status.GRANTED


def test_free_host_drops_everything_of_a_host_and_wakes_others():
    t = LockTable()
    G = ("dev", 2)
    t.lock(F, Lock.of(A, 0, 10, True))
    t.lock(G, Lock.of(A2, 0, 0, False))
    t.lock(F, Lock.of(B, 0, 10, True), block=True, data="b")
    t.share(G, A, access=1, mode=2)
    assert t.hosts() == {"client-a", "client-b"}
    granted = t.free_host("client-a")
    assert [w.data for w in granted] == ["b"]
    assert t.held_by("client-a") == [] and G not in t.files
    assert held(t) == [(0, 9, True)]


def test_shares():
    t = LockTable()
    R, W = 1, 2
    assert t.share(F, A, access=R, mode=W)          # read, deny writers
    assert not t.share(F, B, access=R | W, mode=0)  # wants to write: denied
    assert t.share(F, B, access=R, mode=0)
    assert not t.share(F, Owner("c", 1), access=R, mode=R), "would deny the readers already there"
    t.unshare(F, A)
    assert t.share(F, Owner("c", 2), access=W, mode=0)


class RefusingMirror:
    """An outside holder of bytes 100..199, exclusive."""

    def __init__(self):
        self.outside = Lock(Owner("", 0), 100, 199, True)
        self.calls = []

    def acquire(self, files, lock):
        self.calls.append(("acquire", lock.owner, lock.start, lock.end))
        return self.test(files, lock)

    def test(self, files, lock):
        return self.outside if self.outside is not None and self.outside.overlaps(lock.start, lock.end) else None

    def release(self, files, owner, start, end, holds_more):
        self.calls.append(("release", owner, start, end, holds_more))


def test_the_mirror_can_refuse_and_is_told_of_releases():
    m = RefusingMirror()
    t = LockTable(m)
    assert t.lock(F, Lock.of(A, 0, 50, True)).status == Status.GRANTED
    out = t.lock(F, Lock.of(A, 150, 10, False), block=True, data="w")
    assert out.status == Status.BLOCKED and out.holder.owner.host == ""
    assert t.test(F, Lock.of(B, 120, 1, False)) is m.outside
    m.outside = None  # the local process let go
    assert [w.data for w in t.wake(F)] == ["w"]
    t.unlock(F, A, 0, 9)
    assert m.calls[-1] == ("release", A, 0, 9, True)
    t.unlock(F, A, 0, END)
    assert m.calls[-1] == ("release", A, 0, END, False)


@given(st.lists(st.tuples(st.sampled_from([A, A2, B]), st.integers(0, 60), st.integers(0, 20), st.booleans(),
                          st.sampled_from(["lock", "unlock"])), max_size=40))
def test_the_table_matches_a_byte_map(ops):
    """Against a model: who holds each byte of a small file, shared or exclusive."""
    t = LockTable()
    size = 100
    model = [dict() for _ in range(size)]  # byte -> {owner: exclusive}
    for owner, offset, length, exclusive, op in ops:
        lock = Lock.of(owner, offset, length, exclusive)
        span = range(offset, min(lock.end, size - 1) + 1)
        if op == "lock":
            conflict = any(o != owner and (exclusive or ex) for b in span for o, ex in model[b].items())
            out = t.lock(F, lock)
            assert (out.status == Status.GRANTED) == (not conflict)
            if not conflict:
                for b in span:
                    model[b][owner] = exclusive
        else:
            t.unlock(F, owner, lock.start, lock.end)
            for b in span:
                model[b].pop(owner, None)
        for who in (A, A2, B):
            bytes_held = {b: model[b][who] for b in range(size) if who in model[b]}
            from_table = {}
            for start, end, ex in held(t, who):
                for b in range(start, min(end, size - 1) + 1):
                    from_table[b] = ex
            assert from_table == bytes_held
        mine = [lk for lk in (t.files[F].granted if F in t.files else [])]
        for i, x in enumerate(mine):
            for y in mine[i + 1:]:
                assert not x.conflicts(y)


def test_many_random_operations_stay_consistent():
    rnd = random.Random(5)
    t = LockTable()
    owners = [Owner(f"h{i % 3}", i) for i in range(6)]
    for _ in range(3000):
        o = rnd.choice(owners)
        start = rnd.randrange(1000)
        if rnd.random() < 0.6:
            t.lock(F, Lock.of(o, start, rnd.randrange(50), rnd.random() < 0.5), block=rnd.random() < 0.3)
        elif rnd.random() < 0.9:
            t.unlock(F, o, start, start + rnd.randrange(100))
        else:
            t.free_host(o.host)
        files = t.files.get(F)
        if files:
            for i, x in enumerate(files.granted):
                for y in files.granted[i + 1:]:
                    assert not x.conflicts(y)
            for w in files.waiters:
                assert any(g.conflicts(w.lock) for g in files.granted), "a waiter that could go was not granted"
