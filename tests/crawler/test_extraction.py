"""crawler.extraction.Rules: what the built-in spider (and the preview) does with one page."""

from scrapy.http import HtmlResponse, Response

from crawler.definition import validate
from crawler.extraction import DENY_PATTERN, NO_ALLOW_MATCH, OFF_DOMAIN, Rules, parsed
from crawler.spiders.configurable import ConfigurableSpider

PAGE = b"""<html><body>
<ul><li class="p"><b>One</b><i>a</i><i> </i><i>b</i></li><li class="p"><b> Two </b></li></ul>
<a href="/c/1">c1</a><a href="/c/1">again</a><a href="/c/login">login</a><a href="/about">about</a>
<a href="http://shop.example.org/c/2">sub</a><a href="http://elsewhere.test/c/3">away</a>
<a href="ftp://shop.example/c/4">ftp</a>
</body></html>"""


def rules(**overrides):
    definition = validate({
        "name": "x", "start_urls": ["http://shop.example/"], "allowed_domains": ["shop.example", "example.org"],
        "follow": {"allow": ["/c/"], "deny": ["login"]},
        "item": {"url_pattern": "/list/", "selector": "li.p", "fields": [
            {"name": "name", "selector": "b::text"}, {"name": "tags", "selector": "i::text", "many": True},
            {"name": "missing", "selector": ".nope::text"}]},
        **overrides,
    })
    return Rules(definition)


def page(url="http://shop.example/list/1"):
    return HtmlResponse(url, body=PAGE, encoding="utf-8")


def test_items_are_one_per_selector_match_with_no_match_as_null_or_empty():
    assert list(rules().extract_items(page())) == [
        {"url": "http://shop.example/list/1", "name": "One", "tags": ["a", "b"], "missing": None},
        {"url": "http://shop.example/list/1", "name": "Two", "tags": [], "missing": None},
    ]


def test_item_pages_follow_the_url_pattern():
    r = rules()
    assert r.is_item_page("http://shop.example/list/1")
    assert not r.is_item_page("http://shop.example/c/1")
    assert not Rules({"item": {"url_pattern": "", "fields": []}}).is_item_page("http://shop.example/list/1")
    assert rules(item={"fields": [{"name": "t", "selector": "b::text"}]}).is_item_page("http://shop.example/any")


def test_matches_count_nodes_per_selector():
    assert rules().matches(page()) == {
        "item_selector": {"selector": "li.p", "nodes": 2},
        "fields": {"name": {"selector": "b::text", "nodes": 2}, "tags": {"selector": "i::text", "nodes": 3},
                   "missing": {"selector": ".nope::text", "nodes": 0}},
    }


def test_each_link_once_with_the_first_reason_it_is_dropped_for():
    r = rules()
    links = r.links(page())
    assert links.count("http://shop.example/c/1") == 1
    assert {url: r.refusal(url) for url in links} == {
        "http://shop.example/c/1": "",
        "http://shop.example/c/login": DENY_PATTERN,
        "http://shop.example/about": NO_ALLOW_MATCH,
        "http://shop.example.org/c/2": "",  # a subdomain of an allowed domain
        "http://elsewhere.test/c/3": OFF_DOMAIN,
        "ftp://shop.example/c/4": "",  # another scheme: dropped (and counted) by the scheduler
    }


def test_the_spider_follows_exactly_what_the_rules_allow():
    definition = validate({"name": "x", "start_urls": ["http://shop.example/"], "follow": {"allow": ["/c/"]},
                           "item": {"url_pattern": "/list/", "fields": [{"name": "t", "selector": "b::text"}]}})
    spider = ConfigurableSpider(definition=definition)
    spider.apply_definition(definition)
    out = list(spider.parse(page()))
    assert [o["t"] for o in out if isinstance(o, dict)] == ["One"]
    assert [o.url for o in out if not isinstance(o, dict)] == [
        "http://shop.example/c/1", "http://shop.example/c/login", "ftp://shop.example/c/4"]


def test_only_markup_is_parsed():
    assert parsed(page())
    assert not parsed(Response("http://shop.example/file.pdf", body=b"%PDF-1.4"))
