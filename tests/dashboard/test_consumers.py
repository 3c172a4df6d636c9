"""The live pages' websocket consumers: access on connect, snapshot, updates, bad client messages."""

import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from crawler import keys
from dashboard import live
from dashboard.consumers import CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from dashboard.models import Crawl, Item, Project
from dashboard.redis import get_redis
from dashboard.routing import websocket_urlpatterns

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

DEFINITION = {"name": "Shop", "start_urls": ["http://127.0.0.1:9/"], "workers": 1}


@pytest.fixture
def crawl(owner):
    project = Project.objects.create(owner=owner, name="Shop", definition=DEFINITION)
    crawl = Crawl.objects.create(project=project, definition=DEFINITION, status=Crawl.RUNNING)
    redis = get_redis()
    redis.zadd(keys.queue(crawl.code), {"a": 1, "b": 2})
    redis.hset(keys.stats(crawl.code), mapping={"seen": 5, "pages": 3, "items": 2, "errors": 1, "status:200": 3})
    redis.hset(keys.workers(crawl.code), "w1", json.dumps({"worker": "w1", "host": "box", "pid": 7, "state": "running", "pages": 3}))
    redis.xadd(keys.log(crawl.code), {"worker": "w1", "level": "WARNING", "logger": "scrapy", "message": "<b>careful</b>", "time": "1.0"})
    Item.objects.create(crawl=crawl, key="k1", url="http://127.0.0.1:9/p/1", data={"url": "u", "title": "<script>x</script>"})
    yield crawl
    redis.delete(*redis.keys(keys.crawl_pattern(crawl.code)))


def communicator(path, user):
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    comm.scope["user"] = user
    return comm


async def connect_closed_with(path, user):
    comm = communicator(path, user)
    connected, _ = await comm.connect()
    assert connected  # accepted, then closed, so that the browser sees the code
    output = await comm.receive_output(timeout=3)
    assert output["type"] == "websocket.close"
    await comm.wait()
    return output["code"]


async def test_anonymous_user_is_refused_with_4401(crawl):
    assert await connect_closed_with(f"/ws/crawls/{crawl.code}/", AnonymousUser()) == CLOSE_UNAUTHENTICATED
    assert await connect_closed_with("/ws/crawls/", AnonymousUser()) == CLOSE_UNAUTHENTICATED


async def test_outsider_cannot_watch_someone_elses_crawl(crawl, outsider):
    assert await connect_closed_with(f"/ws/crawls/{crawl.code}/", outsider) == CLOSE_NOT_FOUND


async def test_unknown_or_malformed_code_is_not_found(owner):
    assert await connect_closed_with("/ws/crawls/nosuchcrawl/", owner) == CLOSE_NOT_FOUND
    assert await connect_closed_with("/ws/crawls/BAD!code/", owner) == CLOSE_NOT_FOUND


async def test_owner_gets_a_full_snapshot_on_connect(crawl, owner):
    comm = communicator(f"/ws/crawls/{crawl.code}/", owner)
    assert (await comm.connect())[0]
    snap = await comm.receive_json_from(timeout=3)
    assert snap["type"] == "crawl.snapshot"
    assert snap["status"] == "running"
    assert snap["counters"] == {"queued": 2, "seen": 5, "pages": 3, "items": 2, "errors": 1, "items_too_large": 0, "in_flight": 0}
    assert snap["status_codes"] == {"200": 3}
    assert snap["progress"] == {"done": 3, "total": 5, "percent": 60.0}
    assert snap["workers"][0]["host"] == "box" and snap["workers"][0]["state"] == "running"
    assert snap["items"][0]["data"]["title"] == "<script>x</script>"  # raw: the page uses textContent
    assert snap["log"][0]["message"] == "<b>careful</b>"
    assert snap["series_fields"][0] == "t" and snap["series"] == []
    await comm.disconnect()


async def test_update_sent_to_the_group_reaches_every_viewer(crawl, owner):
    viewers = [communicator(f"/ws/crawls/{crawl.code}/", owner) for _ in range(3)]
    for comm in viewers:
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from(timeout=3))["type"] == "crawl.snapshot"
    await get_channel_layer().group_send(keys.group(crawl.code), {"type": "crawl.update", "seq": 9, "code": crawl.code})
    for comm in viewers:
        update = await comm.receive_json_from(timeout=3)
        assert update == {"type": "crawl.update", "seq": 9, "code": crawl.code}
        await comm.disconnect()


async def test_conductor_publish_reaches_the_page_with_items_and_rates(crawl, owner):
    comm = communicator(f"/ws/crawls/{crawl.code}/", owner)
    assert (await comm.connect())[0]
    snap = await comm.receive_json_from(timeout=3)
    publisher = live.Publisher(get_redis())
    counters = await sync_to_async(lambda: __import__("crawler.state").state.read_counters(get_redis(), crawl.code))()
    items = [{"id": "1-0", "key": "k2", "url": "http://x/2", "worker": "w1", "data": {"title": "y" * 1000}}]
    await sync_to_async(publisher.publish)(crawl, counters, items)
    update = await comm.receive_json_from(timeout=3)
    assert update["type"] == "crawl.update"
    assert update["seq"] == snap["seq"] + 1
    assert update["counters"]["pages"] == 3
    assert update["items"][0]["key"] == "k2"
    assert len(update["items"][0]["data"]["title"]) == live.CLIP  # clipped for the page
    assert update["point"] is not None
    # A page opening now draws the point the conductor just stored.
    await comm.send_json_to({"type": "snapshot.request"})
    again = await comm.receive_json_from(timeout=3)
    assert again["type"] == "crawl.snapshot" and again["seq"] == update["seq"]
    assert len(again["series"]) == 1
    await comm.disconnect()


async def test_bad_client_messages_get_an_error_not_a_crash(crawl, owner):
    comm = communicator(f"/ws/crawls/{crawl.code}/", owner)
    assert (await comm.connect())[0]
    await comm.receive_json_from(timeout=3)
    await comm.send_to(text_data="not json")
    assert (await comm.receive_json_from(timeout=3))["type"] == "error"
    await comm.send_to(bytes_data=b"\x00")
    assert (await comm.receive_json_from(timeout=3))["type"] == "error"
    for bad in ([1, 2], {"no": "type"}, {"type": "drop.tables"}):
        await comm.send_json_to(bad)
        assert (await comm.receive_json_from(timeout=3))["type"] == "error"
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=3) == {"type": "pong"}
    await comm.disconnect()


async def test_a_huge_message_closes_the_socket(crawl, owner):
    from dashboard.consumers import CLOSE_TOO_BIG, MAX_MESSAGE_BYTES

    comm = communicator(f"/ws/crawls/{crawl.code}/", owner)
    assert (await comm.connect())[0]
    await comm.receive_json_from(timeout=3)
    await comm.send_to(text_data=json.dumps({"type": "ping", "pad": "x" * MAX_MESSAGE_BYTES}))
    output = await comm.receive_output(timeout=3)
    assert output == {"type": "websocket.close", "code": CLOSE_TOO_BIG}


async def test_a_flood_of_messages_closes_the_socket(crawl, owner):
    from dashboard.consumers import BURST, CLOSE_POLICY

    comm = communicator("/ws/crawls/", owner)
    assert (await comm.connect())[0]
    await comm.receive_json_from(timeout=3)
    for _ in range(BURST + 20):
        await comm.send_json_to({"type": "ping"})
    outputs = []
    while True:
        output = await comm.receive_output(timeout=3)
        outputs.append(output)
        if output["type"] == "websocket.close":
            break
    assert output["code"] == CLOSE_POLICY
    pongs = [o for o in outputs if o.get("text") == json.dumps({"type": "pong"})]
    assert BURST - 5 <= len(pongs) <= BURST + 5  # the burst is answered, the flood is not


async def test_overview_shows_only_the_users_own_crawls(crawl, owner, outsider):
    other_project = await sync_to_async(Project.objects.create)(owner=outsider, name="Theirs", definition=DEFINITION)
    other = await sync_to_async(Crawl.objects.create)(project=other_project, definition=DEFINITION, status=Crawl.RUNNING)
    comm = communicator("/ws/crawls/", owner)
    assert (await comm.connect())[0]
    snap = await comm.receive_json_from(timeout=3)
    assert snap["type"] == "overview.snapshot"
    assert [row["code"] for row in snap["crawls"]] == [crawl.code]
    assert snap["crawls"][0]["counters"]["pages"] == 3
    # The conductor's overview message goes to each owner's own group.
    publisher = live.Publisher(get_redis())
    for c in (crawl, other):
        c_full = await sync_to_async(lambda c=c: Crawl.objects.select_related("project").get(pk=c.pk))()
        await sync_to_async(publisher.publish)(c_full, {"pages": 4}, [])
    await sync_to_async(publisher.publish_overview)()
    update = await comm.receive_json_from(timeout=3)
    assert update["type"] == "overview.update"
    assert [row["code"] for row in update["crawls"]] == [crawl.code]
    assert update["crawls"][0]["counters"]["pages"] == 4
    await comm.disconnect()
