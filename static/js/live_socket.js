/* Crawlsite live pages: one websocket with reconnect, backoff and gap detection.
 * Messages are described in docs/websocket.md. No HTML is ever built from message strings:
 * pages fill server-rendered <template> rows with textContent. */
(function () {
  "use strict";

  function LiveSocket(root, handlers) {
    this.root = root;
    this.path = root.dataset.wsPath;
    this.handlers = handlers;
    this.seq = null;          // last sequence number applied (crawl pages)
    this.delay = 1000;        // next reconnect delay, doubled up to maxDelay
    this.maxDelay = 30000;
    this.closedForGood = false;
    this.indicator = root.querySelector('[data-live="connection"]');
    this.indicatorText = root.querySelector('[data-live="connection-text"]');
    this.connect();
  }

  LiveSocket.prototype.setState = function (state, text) {
    if (this.indicator) {
      this.indicator.className = "conn conn-" + state;
      this.indicator.dataset.state = state;
    }
    if (this.indicatorText) this.indicatorText.textContent = text;
  };

  LiveSocket.prototype.connect = function () {
    var self = this;
    var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    this.setState("connecting", "Connecting…");
    var ws;
    try {
      ws = new WebSocket(scheme + window.location.host + this.path);
    } catch (e) {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = function () {
      self.delay = 1000;
      self.setState("live", "Live");
    };
    ws.onmessage = function (event) {
      var msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      self.dispatch(msg);
    };
    ws.onclose = function (event) {
      self.ws = null;
      if (event.code === 4401) {
        self.closedForGood = true;
        self.setState("down", "Signed out: reload the page to log in again");
      } else if (event.code === 4404 || event.code === 4403) {
        self.closedForGood = true;
        self.setState("down", "This crawl is not available");
      } else {
        self.retry();
      }
    };
  };

  LiveSocket.prototype.retry = function () {
    var self = this;
    if (this.closedForGood) return;
    var wait = Math.round(this.delay * (0.8 + Math.random() * 0.4));
    this.delay = Math.min(this.delay * 2, this.maxDelay);
    var until = Date.now() + wait;
    var tick = function () {
      var left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      self.setState("down", "Connection lost, reconnecting in " + left + " s…");
      if (Date.now() >= until) { clearInterval(self.countdown); self.connect(); }
    };
    clearInterval(this.countdown);
    this.countdown = setInterval(tick, 250);
    tick();
  };

  LiveSocket.prototype.send = function (msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  };

  LiveSocket.prototype.dispatch = function (msg) {
    if (!msg || typeof msg.type !== "string") return;
    if (msg.type.slice(-9) === ".snapshot") {
      if (typeof msg.seq === "number") this.seq = msg.seq;
    } else if (msg.type === "crawl.update" && typeof msg.seq === "number") {
      if (this.seq !== null && msg.seq <= this.seq) return;   // already in the snapshot
      var gap = this.seq !== null && msg.seq !== this.seq + 1;
      this.seq = msg.seq;
      if (gap) this.send({type: "snapshot.request"});         // missed updates: catch up
    }
    var handler = this.handlers[msg.type];
    if (handler) handler(msg);
  };

  /* Helpers shared by the pages. */
  var fmt = new Intl.NumberFormat();
  LiveSocket.formatNumber = function (n) { return fmt.format(n || 0); };
  LiveSocket.formatRate = function (n) { return (n || 0).toFixed(1); };
  LiveSocket.ago = function (seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "";
    var s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    return Math.floor(s / 3600) + " h ago";
  };
  /* A fresh copy of a server-rendered row from <template data-template=NAME>. */
  LiveSocket.row = function (root, name) {
    var tpl = root.querySelector('template[data-template="' + name + '"]');
    return tpl.content.firstElementChild.cloneNode(true);
  };
  LiveSocket.setField = function (el, name, value) {
    var node = el.querySelector('[data-field="' + name + '"]');
    if (node) node.textContent = value === null || value === undefined ? "" : String(value);
    return node;
  };

  window.LiveSocket = LiveSocket;
})();
