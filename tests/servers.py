"""A real ASGI server (uvicorn) serving Crawlsite inside the test process.

HTTP and websockets go through the same stack as `make run`. It runs in a thread so it shares
pytest-django's test database (use it with ``transactional_db``).
"""

import asyncio
import threading

import uvicorn

from launcher.redis import free_port


class ThreadedServer:
    def __init__(self, app="crawlsite.asgi:application"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", ws="websockets-sansio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.run(self.server.serve())

    def start(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            self.thread.join(0.05)
        raise RuntimeError("test ASGI server did not start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
