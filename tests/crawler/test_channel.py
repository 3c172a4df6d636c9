"""crawler.scripts.Channel: script calls sent without waiting, replies read in order, failures reported.

The reactor side (the socket watched while replies are due) runs in every worker of the crawl
tests; here the channel is driven by hand against the real Redis.
"""

import time

import pytest
from redis.exceptions import ConnectionError

from crawler import keys, politeness, scripts


def _release(code, ids):
    return scripts.RELEASE.call([keys.leases(code, "w1"), keys.stats(code), *politeness.release_keys(code)], ids)


def _lease(r, code, n):
    r.hset(keys.leases(code, "w1"), mapping={str(i): "x" for i in range(n)})
    r.hset(keys.stats(code), "leased", n)


def _until(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "Redis never ran the batch"
        time.sleep(0.005)


def test_batches_run_without_waiting_and_replies_come_in_order(r, code):
    _lease(r, code, 5)
    scripts.load_all(r)  # else the first reply is NOSCRIPT, and the batch runs only once it is read
    channel = scripts.Channel(r)
    replies = []
    channel.send([_release(code, ["0", "1"])], replies.append)
    channel.send([_release(code, ["1", "2"]), _release(code, ["3"])], replies.append)
    assert channel.busy and replies == []  # sent, nothing read yet
    _until(lambda: r.hlen(keys.leases(code, "w1")) == 1)  # ...and Redis ran both batches
    channel.poll()  # the replies have arrived: read without blocking
    assert replies == [[2], [1, 1]] and not channel.busy
    assert channel.call([_release(code, ["4"])]) == [1]
    assert r.hget(keys.stats(code), "leased") == "0"
    channel.close()


def test_call_reads_the_replies_of_earlier_batches_first(r, code):
    _lease(r, code, 3)
    channel = scripts.Channel(r)
    replies = []
    channel.send([_release(code, ["0"])], replies.append)
    channel.send([_release(code, ["1"])], replies.append)
    assert channel.call([_release(code, ["0", "1", "2"])]) == [1]  # after the two before it
    assert replies == [[1], [1]]
    channel.close()


def test_a_lost_connection_fails_the_due_batches_and_the_next_one_reconnects(r, code):
    _lease(r, code, 2)
    channel = scripts.Channel(r)
    assert channel.call([_release(code, ["0"])]) == [1]
    r.client_kill_filter(_type="normal", skipme=True)  # drops the channel's connection
    replies = []
    channel.send([_release(code, ["1"])], replies.append)
    channel.wait()
    assert len(replies) == 1 and isinstance(replies[0], ConnectionError) and not channel.busy
    assert channel.call([_release(code, ["1"])]) in ([0], [1])  # a new connection; ran at most once
    assert r.hlen(keys.leases(code, "w1")) == 0
    channel.close()


def test_a_lua_error_is_the_reply_of_its_batch(r, code):
    r.set(keys.leases(code, "w1"), "not a hash")
    channel = scripts.Channel(r)
    with pytest.raises(Exception, match="WRONGTYPE"):
        channel.call([_release(code, ["1"])])
    r.delete(keys.leases(code, "w1"))
    assert channel.call([_release(code, ["1"])]) == [0]  # the connection is still usable
    channel.close()


def test_scripts_flushed_from_redis_are_loaded_again(r, code):
    _lease(r, code, 2)
    channel = scripts.Channel(r)
    r.script_flush()
    assert channel.call([_release(code, ["0"]), _release(code, ["1"])]) == [1, 1]
    channel.close()


def test_writes_are_sent_again_after_a_lost_connection_and_other_batches_fail(r, code):
    _lease(r, code, 3)
    scripts.load_all(r)
    channel = scripts.Channel(r)
    assert channel.call([_release(code, ["0"])]) == [1]
    r.client_kill_filter(_type="normal", skipme=True)  # drops the channel's connection
    writes, pops = [], []
    # the loss shows when sending (broken pipe) or when reading (closed): either way the write
    # is kept and sent again on a new connection, the other batch (a pop, say) is not
    channel.send([_release(code, ["1"])], writes.append, resend=True)
    channel.send([_release(code, ["2"])], pops.append)
    channel.wait()
    channel.retry()
    channel.wait()
    assert channel.losses == 1 and not channel.busy
    assert writes == [[1]]  # ran once, on the new connection
    if pops == [[1]]:  # sent after the write, on the new connection
        assert r.hlen(keys.leases(code, "w1")) == 0
    else:  # sent on the dead one: failed, not run
        assert len(pops) == 1 and isinstance(pops[0], ConnectionError)
        assert r.hkeys(keys.leases(code, "w1")) == ["2"]
    channel.close()
