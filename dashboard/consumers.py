"""Websocket consumers of the live pages. Thin: check access, join the group, send a snapshot, relay.

The conductor sends the updates (dashboard/live.py); the message schema is in docs/websocket.md.
Close codes: 4401 not logged in, 4404 no such crawl for this user (another user's crawl does not
exist for them, as in the views).
"""

import json
import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.core.serializers.json import DjangoJSONEncoder

from crawler import keys
from dashboard import live
from dashboard.models import Crawl

log = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_BIG = 1009  # RFC 6455: message too big
CLOSE_POLICY = 1008  # RFC 6455: policy violation (here: too many messages)
# Browsers send a few small messages (ping, snapshot request); anything beyond is abuse.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_MESSAGES_PER_SECOND = 20
BURST = 40
# Recent crawls per project on the overview.
OVERVIEW_CRAWLS_PER_PROJECT = 5


@database_sync_to_async
def get_crawl_for_user(user, code):
    try:
        keys.validate_code(code)
    except ValueError:
        return None
    return Crawl.objects.for_user(user).select_related("project").filter(code=code).first()


@database_sync_to_async
def build_crawl_snapshot(code):
    crawl = Crawl.objects.select_related("project").get(code=code)
    items = [
        {"id": i.pk, "key": i.key, "url": i.url, "worker": i.worker, "data": i.data}
        for i in crawl.items.order_by("-id")[: live.SNAPSHOT_ITEMS]
    ]
    return live.crawl_snapshot(crawl, items)


@database_sync_to_async
def build_overview_snapshot(user):
    return live.overview_snapshot(live.recent_crawls(user, OVERVIEW_CRAWLS_PER_PROJECT))


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Shared plumbing: JSON errors instead of crashes, ping, snapshot on request."""

    group = None

    @classmethod
    async def encode_json(cls, content):
        # Views of a crawl carry datetimes (ISO 8601 in JSON), as the conductor's updates do.
        return json.dumps(content, cls=DjangoJSONEncoder)

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if not self.allow_message():
            log.warning("closing a websocket that sent more than %d messages/s", MAX_MESSAGES_PER_SECOND)
            await self.close(code=CLOSE_POLICY)
            return
        if len(text_data or bytes_data or "") > MAX_MESSAGE_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return
        if text_data is None:
            await self.send_error("binary frames are not accepted")
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self.send_error("messages must be JSON objects")
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "snapshot.request":
            await self.send_snapshot()
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_error(f"unknown message type {kind!r}" if kind else "messages need a \"type\"")

    def allow_message(self):
        """A token bucket per connection: MAX_MESSAGES_PER_SECOND, bursts up to BURST."""
        now = time.monotonic()
        tokens, last = getattr(self, "_bucket", (BURST, now))
        tokens = min(BURST, tokens + (now - last) * MAX_MESSAGES_PER_SECOND)
        if tokens < 1:
            self._bucket = (tokens, now)
            return False
        self._bucket = (tokens - 1, now)
        return True

    async def send_error(self, error):
        await self.send_json({"type": "error", "error": error})

    async def send_snapshot(self):
        raise NotImplementedError

    async def relay(self, event):
        # The conductor encodes each update once (live.encoded); a plain dict event works too.
        if "text" in event:
            await self.send(text_data=event["text"])
        else:
            await self.send_json(event)

    async def refuse(self, code):
        # Accept first so that the browser sees the close code (a refused handshake is just 1006).
        await self.accept()
        await self.close(code=code)

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)


class CrawlConsumer(LiveConsumer):
    """``/ws/crawls/CODE/``: one crawl's snapshot, then every ``crawl.update`` the conductor sends."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED)
            return
        self.code = self.scope["url_route"]["kwargs"]["code"]
        crawl = await get_crawl_for_user(user, self.code)
        if crawl is None:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        self.group = keys.group(self.code)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def send_snapshot(self):
        await self.send_json(await build_crawl_snapshot(self.code))

    async def crawl_update(self, event):
        await self.relay(event)


class OverviewConsumer(LiveConsumer):
    """``/ws/crawls/``: the user's crawls, then an ``overview.update`` each tick with active crawls."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED)
            return
        self.group = keys.owner_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def send_snapshot(self):
        await self.send_json(await build_overview_snapshot(self.scope["user"]))

    async def overview_update(self, event):
        await self.relay(event)
