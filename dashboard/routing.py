"""Websocket routes. Every consumer checks the user (and ownership) in ``connect``."""

from django.urls import path

from dashboard import consumers

websocket_urlpatterns = [
    path("ws/crawls/", consumers.OverviewConsumer.as_asgi(), name="ws-overview"),
    path("ws/crawls/<str:code>/", consumers.CrawlConsumer.as_asgi(), name="ws-crawl"),
]
