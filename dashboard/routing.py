"""Websocket routes. Every consumer checks the user (and ownership) in ``connect``."""

websocket_urlpatterns = []
