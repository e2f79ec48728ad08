"""Payload buffers: a pooled buffer is reused only once released AND no longer borrowed."""

from peerstore.shell.daemon.buffers import POOLED_MIN, Buffers, SlabPool


def test_a_released_buffer_still_borrowed_is_not_reused_until_given_back():
    buffers = Buffers(SlabPool(max_cached=4 * POOLED_MIN))
    slab = buffers.take(POOLED_MIN)
    handle = buffers.add(slab, owner=slab)
    sending = buffers.borrow(handle)  # a worker thread is still sending from it
    buffers.release(handle)  # the core gave up on it
    assert buffers.take(POOLED_MIN) is not slab  # must not be handed out under the send
    assert buffers.borrow(handle) is None  # released: no new borrower
    assert sending is slab and len(buffers) == 1
    buffers.give_back(handle)
    assert len(buffers) == 0 and buffers.bytes == 0
    assert buffers.take(POOLED_MIN) is slab  # now it is reused


def test_the_pool_keeps_at_most_its_cap_and_ignores_small_buffers():
    pool = SlabPool(max_cached=2 * POOLED_MIN)
    for _ in range(3):
        pool.give(bytearray(POOLED_MIN))
    pool.give(bytearray(POOLED_MIN // 2))
    assert pool.cached == 2 * POOLED_MIN
    assert len(pool.take(POOLED_MIN)) == POOLED_MIN and pool.cached == POOLED_MIN
