"""The network policy: which addresses crawls may reach, and the resolver that enforces it."""

import subprocess
import sys

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address

from crawler import keys, state
from crawler.netguard import GuardedResolver, refusals
from crawler.netpolicy import Policy, PolicyError, parse_allowed, parse_entry, scheme_allowed
from crawler.settings import crawl_settings

DEFAULT = Policy()

REFUSED = [
    # IPv4
    "0.0.0.0", "0.1.2.3", "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.127.255.254",
    "100.100.100.200", "127.0.0.1", "127.8.9.10", "169.254.169.254", "169.254.0.1", "172.16.0.1",
    "172.31.255.255", "192.0.0.170", "192.0.2.1", "192.88.99.1", "192.168.1.1", "198.18.0.1",
    "198.19.255.255", "198.51.100.7", "203.0.113.9", "224.0.0.1", "239.255.255.250",
    "240.0.0.1", "255.255.255.255",
    # IPv6
    "::", "::1", "100::1", "fc00::1", "fd00:ec2::254", "fe80::1", "fe80::1%eth0", "fec0::1",
    "ff02::1", "ff0e::1", "2001:db8::1", "2001:2::1", "2001:10::1", "3fff::1", "5f00::1",
    "64:ff9b:1::808:808", "4000::1", "::8.8.8.8",
    # IPv6 forms carrying a refused IPv4 address
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:a9fe:a9fe::", "2002:c0a8:101::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45
    "2001:0:7f00:1:0:0:f7f7:f7f7",  # Teredo via server 127.0.0.1
    "2001:0:808:808:0:0:80ff:fffe",  # Teredo, client 127.0.0.1
]
PUBLIC = ["8.8.8.8", "93.184.216.34", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.32.0.1", "198.20.0.1",
          "2606:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8", "64:ff9b::808:808",
          "2002:808:808::1", "2001:0:808:808:0:0:f7f7:f7f7"]


@pytest.mark.parametrize("address", REFUSED)
def test_special_addresses_are_refused_by_default(address):
    assert DEFAULT.check(address, 80), address


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert DEFAULT.check(address, 80) == "", address


def test_reasons_name_the_address_and_the_embedded_one():
    assert DEFAULT.check("127.0.0.1", 80) == "127.0.0.1 is a loopback address"
    assert "link-local" in DEFAULT.check("169.254.169.254", 80)
    assert DEFAULT.check("::ffff:127.0.0.1", 80) == "::ffff:7f00:1 is IPv4-mapped for 127.0.0.1, a loopback address"
    assert "NAT64 for 169.254.169.254" in DEFAULT.check("64:ff9b::a9fe:a9fe", 80)
    assert "6to4 for 192.168.1.1" in DEFAULT.check("2002:c0a8:101::1", 80)
    assert "Teredo client for 192.0.2.45" in DEFAULT.check("2001:0:4136:e378:8000:63bf:3fff:fdd2", 80)
    assert DEFAULT.check("localhost", 80) == "'localhost' is not an IP address"


def test_allowed_entries_open_an_address_and_port_only():
    policy = Policy.from_string("127.0.0.1:8001, [::1]:8002,10.0.0.0/8,[fd00::]/8:443,[fe80::/64]")
    assert policy.check("127.0.0.1", 8001) == ""
    assert policy.check("::ffff:127.0.0.1", 8001) == ""  # the same socket
    assert "loopback" in policy.check("127.0.0.1", 8000)
    assert "loopback" in policy.check("127.0.0.2", 8001)
    assert "NAT64" in policy.check("64:ff9b::7f00:1", 8001)  # a translator's own loopback: not opened
    assert policy.check("::1", 8002) == "" and policy.check("::1", 8001)
    assert policy.check("10.1.2.3", 1) == policy.check("10.255.0.1", 65535) == ""
    assert policy.check("fd12::1", 443) == "" and policy.check("fd12::1", 80)
    assert policy.check("fe80::1", 80) == "" and policy.check("fe80:0:0:1::1", 80)
    assert "link-local" in policy.check("169.254.169.254", 80)
    assert str(policy) == "127.0.0.1:8001,[::1]:8002,10.0.0.0/8,[fd00::]/8:443,[fe80::]/64"


@pytest.mark.parametrize("entry, message", [
    ("localhost:8001", "is not ADDRESS[/PREFIX][:PORT]"),
    ("::1", "IPv6 addresses go in brackets"),
    ("fd00::/8", "IPv6 addresses go in brackets"),
    ("127.0.0.1:0", "between 1 and 65535"),
    ("127.0.0.1:65536", "between 1 and 65535"),
    ("127.0.0.1:", "is not ADDRESS"),
    ("10.0.0.1/8", "host bits set"),
    ("10.0.0.0/33", "not a valid address"),
    ("127.1", "not a valid address"),
    ("999.0.0.1", "not a valid address"),
    ("[127.0.0.1]:80", "only IPv6 addresses go in brackets"),
    ("[::1/128]/128", "two prefix lengths"),
    ("[::1", "is not ADDRESS"),
    ("http://127.0.0.1:8001/", "is not ADDRESS"),
    ("127.0.0.1:80\n", None),  # surrounding space is fine
])
def test_bad_entries_are_errors_naming_the_entry(entry, message):
    if message is None:
        assert parse_entry(entry).port == 80
        return
    with pytest.raises(PolicyError) as info:
        parse_allowed(f"127.0.0.1:9000,{entry}")
    assert message in str(info.value) and repr(entry.strip()) in str(info.value)
    assert str(info.value).startswith("CRAWLSITE_ALLOWED_NETWORKS: ")


def test_empty_value_opens_nothing():
    assert parse_allowed("") == parse_allowed(None) == parse_allowed(" , ,") == ()


@pytest.mark.parametrize("url, ok", [
    ("http://a/", True), ("HTTPS://a/", True), ("file:///etc/passwd", False), ("ftp://a/", False),
    ("data:text/plain,x", False), ("s3://bucket/key", False), ("javascript:alert(1)", False), ("a/b", False),
])
def test_only_http_and_https_urls_are_fetched(url, ok):
    assert scheme_allowed(url) is ok


# -- the resolver ----------------------------------------------------------------------------

class Receiver:
    def __init__(self):
        self.addresses, self.began, self.complete = [], False, False

    def resolutionBegan(self, resolution):
        self.began = True

    def addressResolved(self, address):
        self.addresses.append(address)

    def resolutionComplete(self):
        self.complete = True


class AnsweringResolver(GuardedResolver):
    """The guarding resolver with a DNS answer chosen by the test (no DNS server runs here)."""

    def __init__(self, policy, answer):
        super().__init__(reactor=None, policy=policy)
        self.answer = answer

    def _lookup(self, host, port, want4, want6):
        return defer.succeed(self.answer)


def resolve(resolver, host, port, types=None):
    receiver = Receiver()
    resolver.resolveHostName(receiver, host, port, types)
    assert receiver.began and receiver.complete
    return receiver.addresses


def test_a_name_is_connected_only_to_its_allowed_addresses():
    # a rebinding-style answer: one public address and one internal one for the same name
    resolver = AnsweringResolver(Policy(), [(4, "93.184.216.34", 0, 0), (4, "127.0.0.1", 0, 0),
                                            (6, "::1", 0, 0), (6, "2606:4700::1111", 0, 0)])
    assert resolve(resolver, "rebind.example", 443) == [IPv4Address("TCP", "93.184.216.34", 443),
                                                        IPv6Address("TCP", "2606:4700::1111", 443, 0, 0)]
    assert refusals.get("rebind.example", 443) == ""


def test_a_name_with_only_refused_addresses_resolves_to_nothing_with_a_reason():
    resolver = AnsweringResolver(Policy(), [(4, "169.254.169.254", 0, 0), (6, "fd00:ec2::254", 0, 0)])
    assert resolve(resolver, "metadata.example", 80) == []
    reason = refusals.get("METADATA.example", 80)
    assert reason.startswith("metadata.example resolves to 169.254.169.254 is a link-local")
    assert "fd00:ec2::254 is a unique local" in reason and "port 80" in reason


def test_the_port_is_part_of_the_decision():
    resolver = AnsweringResolver(Policy.from_string("127.0.0.1:8001"), [(4, "127.0.0.1", 0, 0), (6, "::1", 0, 0)])
    assert resolve(resolver, "localhost", 8001) == [IPv4Address("TCP", "127.0.0.1", 8001)]
    assert resolve(resolver, "localhost", 8002) == []
    assert "loopback" in refusals.get("localhost", 8002)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "169.254.169.254", "::ffff:10.0.0.1"])
def test_ip_literals_are_judged_without_a_lookup(host):
    resolver = AnsweringResolver(Policy(), None)  # a lookup would fail: the answer is not a list
    assert resolve(resolver, host, 80) == []
    assert refusals.get(host, 80)


def test_ip_literals_that_are_allowed_are_handed_over():
    resolver = AnsweringResolver(Policy.from_string("127.0.0.1:8001,[::1]:8001"), None)
    assert resolve(resolver, "127.0.0.1", 8001) == [IPv4Address("TCP", "127.0.0.1", 8001)]
    assert resolve(resolver, "::1", 8001) == [IPv6Address("TCP", "::1", 8001, 0, 0)]
    assert resolve(resolver, "8.8.8.8", 80, [IPv6Address]) == []  # the family asked for is kept


def test_a_failed_lookup_completes_empty():
    class Failing(AnsweringResolver):
        def _lookup(self, host, port, want4, want6):
            return defer.fail(TimeoutError("DNS timed out"))

    assert resolve(Failing(Policy(), None), "slow.example", 80) == []
    assert refusals.get("slow.example", 80) == ""  # not refused: an ordinary DNS failure


def test_every_address_localhost_resolves_to_is_refused():
    found = GuardedResolver._getaddrinfo("localhost", 80, True, True)  # the real lookup
    assert found
    assert all(Policy().check(address, 80) for _v, address, _f, _s in found)


# -- worker settings -------------------------------------------------------------------------

def test_only_http_handlers_and_the_guarding_resolver_are_configured(monkeypatch):
    monkeypatch.setenv("CRAWLSITE_ALLOWED_NETWORKS", "127.0.0.1:8001")
    s = crawl_settings({"settings": {}}, "tabc", "w1")
    handlers = s.getwithbase("DOWNLOAD_HANDLERS")
    assert {k for k, v in handlers.items() if v} == {"http", "https"}
    assert s["TWISTED_DNS_RESOLVER"] == "crawler.netguard.GuardedResolver"
    assert s.getbool("DNSCACHE_ENABLED") is False
    assert s["CRAWLSITE_ALLOWED_NETWORKS"] == "127.0.0.1:8001"
    with pytest.raises(ValueError, match="fixed by the network policy"):
        crawl_settings({}, "tabc", "w1", overrides={"DOWNLOAD_HANDLERS": {"file": "x"}})


def test_a_worker_with_a_bad_entry_refuses_to_start_with_one_line(r, code, redis_url):
    from helpers import ROOT, worker_env

    state.launch(r, code, {"name": "x", "start_urls": ["http://example.com/"]})
    env = dict(worker_env(redis_url), CRAWLSITE_ALLOWED_NETWORKS="127.0.0.1:8001,localhost")
    result = subprocess.run([sys.executable, "-m", "crawler", "run", code, "--worker", "w1"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Startup error: CRAWLSITE_ALLOWED_NETWORKS: entry 'localhost' is not ADDRESS[/PREFIX][:PORT]"]
    worker = state.read_counters(r, code)["workers"]["w1"]
    assert worker["state"] == "failed" and "'localhost'" in worker["message"]
    assert r.xlen(keys.items(code)) == 0


def test_the_resolver_keeps_scrapys_dns_timeout_and_reads_the_exceptions(monkeypatch):
    monkeypatch.setenv("CRAWLSITE_ALLOWED_NETWORKS", "[::1]:8001")
    settings = crawl_settings({}, "tabc", "w1", overrides={"DNS_TIMEOUT": "7"})

    class Process:  # Scrapy builds the resolver from the CrawlerProcess: only its settings are read
        pass

    process = Process()
    process.settings = settings
    resolver = GuardedResolver.from_crawler(process, reactor=None)
    assert resolver.timeout == 7.0
    assert str(resolver.policy) == "[::1]:8001"


def test_the_scheduler_drops_other_schemes_before_queueing_counts_and_logs_them(r, code, caplog):
    from types import SimpleNamespace

    from scrapy import Request, Spider
    from scrapy.settings import Settings
    from scrapy.statscollectors import MemoryStatsCollector
    from scrapy.utils.request import RequestFingerprinter

    from crawler.scheduler import RedisScheduler

    engine = SimpleNamespace(downloader=SimpleNamespace(total_concurrency=4, active=set()))
    stats = MemoryStatsCollector(SimpleNamespace(settings=Settings()))
    sched = RedisScheduler(r, code, "w1", fingerprinter=RequestFingerprinter(), crawler=SimpleNamespace(engine=engine),
                           idle_poll=0, stats=stats)
    sched.open(Spider(name="s"))
    hostile = ["file:///etc/passwd", "FILE://127.0.0.1/etc/passwd", "ftp://127.0.0.1:6379/", "data:text/html,x",
               "s3://bucket/key", "gopher://127.0.0.1:6379/_INFO"]
    with caplog.at_level("WARNING", logger="crawler.netguard"):
        assert [sched.enqueue_request(Request(url)) for url in hostile] == [False] * len(hostile)
        assert sched.enqueue_request(Request("http://example.com/")) is True
    sched.flush()
    assert r.zcard(keys.queue(code)) == 1
    assert stats.get_value("crawlsite/blocked_scheme") == len(hostile)
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "crawler.netguard"]
    assert "Refused file:///etc/passwd: the 'file' scheme is never fetched (only http and https)" in logged
    assert len(logged) == len(hostile)


def test_a_flood_of_refused_links_is_counted_in_full_and_logged_in_part(r, code, caplog):
    from types import SimpleNamespace

    from scrapy import Request, Spider
    from scrapy.settings import Settings
    from scrapy.statscollectors import MemoryStatsCollector
    from scrapy.utils.request import RequestFingerprinter

    from crawler.netguard import LOGGED_PER_KIND
    from crawler.scheduler import RedisScheduler

    engine = SimpleNamespace(downloader=SimpleNamespace(total_concurrency=4, active=set()))
    stats = MemoryStatsCollector(SimpleNamespace(settings=Settings()))
    sched = RedisScheduler(r, code, "w1", fingerprinter=RequestFingerprinter(), crawler=SimpleNamespace(engine=engine),
                           idle_poll=0, stats=stats)
    sched.open(Spider(name="s"))
    with caplog.at_level("WARNING", logger="crawler.netguard"):
        for i in range(500):
            sched.enqueue_request(Request(f"file:///etc/{i}"))
    assert stats.get_value("crawlsite/blocked_scheme") == 500
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "crawler.netguard"]
    assert len(logged) == LOGGED_PER_KIND + 1
    assert logged[-1] == "Further refused requests of this kind are counted, not logged"
