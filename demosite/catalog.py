"""Deterministic shop catalog for the demo site.

``build_catalog(profile, seed)`` returns the same :class:`Catalog` for the same arguments, on any
machine and any ``PYTHONHASHSEED`` (``random.Random`` is seeded with a string).

A few products in every profile carry awkward text on purpose (quotes, commas, ``<b>`` tags as
text, an ampersand, non-BMP emoji, a title starting with ``=``) so that exports are tested on
real scraped data.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["PROFILES", "Profile", "Category", "Product", "Catalog", "build_catalog"]


@dataclass(frozen=True)
class Profile:
    name: str
    categories: int
    products_per_category: int
    per_page: int
    traps: bool  # test-only pages: redirects, 404/500, calendar trap, pdf, malformed, slow, ...
    # on top of the traps: robots.txt disallows linked /private/ pages, /old/ redirects twice,
    # some product pages answer 500 on their first fetch (a retry gets them); see README.md
    adversarial: bool = False


PROFILES: dict[str, Profile] = {
    "demo": Profile("demo", categories=5, products_per_category=12, per_page=8, traps=False),
    "test": Profile("test", categories=8, products_per_category=25, per_page=6, traps=True),
    "bench": Profile("bench", categories=20, products_per_category=110, per_page=20, traps=False),
    "lifecycle": Profile("lifecycle", categories=4, products_per_category=30, per_page=5, traps=True,
                         adversarial=True),
}

DEFAULT_SEED = 1

_CATEGORY_NAMES = [
    "Books", "Home & Garden", "Toys", "Café Goods", "Tools", "Music", "Outdoor", "Kitchen",
    "Office", "Lighting", "Bags", "Pets", "Bikes", "Garden Seeds", "Games", "Art Supplies",
    "Watches", "Tea", "Storage", "Cables",
]
_ADJECTIVES = [
    "Classic", "Compact", "Deluxe", "Eco", "Handmade", "Heavy-duty", "Light", "Modern", "Nordic",
    "Pocket", "Quiet", "Rustic", "Smart", "Solid", "Tiny", "Vintage", "Waterproof", "Wooden",
]
_NOUNS = [
    "Lamp", "Kettle", "Notebook", "Backpack", "Clock", "Mug", "Chair", "Speaker", "Planter",
    "Blanket", "Puzzle", "Toolbox", "Pen", "Bottle", "Shelf", "Torch", "Basket", "Frame",
]
_PHRASES = [
    "Built to last.", "Ships in recycled packaging.", "A customer favourite, since 2019.",
    "Fits in a drawer, a bag, or a pocket.", "Easy to clean; dishwasher safe.",
    "Comes with a two-year warranty.", "Made from sustainably sourced materials.",
]

# (category position, product position) -> (title, description); positions are modulo-safe.
_SPECIAL = [
    ('Say "Cheese" Camera, 35mm', 'The "instant" classic, with strap, case, and film.'),
    ("Tag <b>Bold</b> Marker", "Writes <b>bold</b> lines & never <i>smudges</i>."),
    ("Rocket \U0001F680 Lamp \u2728", "Lights up the room \U0001F319, no batteries needed."),
    ("=SUM(1+2) Calculator", "=HYPERLINK(\"http://example.com\") is not a formula here, honest."),
    ("O'Brien's Tea & Biscuits, Set of 3", "Line one, with a comma.\nLine two; with \"quotes\"."),
    ("Caf\u00e9 Cr\u00e8me Br\u00fbl\u00e9e Torch \U0001F525", "Unicode: \u00fc\u00f1\u00ee\u00e7\u00f8d\u00e9, \u4e2d\u6587, \U0001F600."),
]


@dataclass(frozen=True)
class Category:
    slug: str
    name: str
    index: int


@dataclass(frozen=True)
class Product:
    sku: str
    title: str
    price: str  # "12.99": exactly the text of the page's ``.price`` element
    category: str  # category slug
    category_name: str  # exactly the text of the page's ``.category`` element
    description: str
    in_stock: bool


@dataclass
class Catalog:
    profile: Profile
    seed: int
    categories: list[Category]
    products: list[Product]
    by_sku: dict[str, Product] = field(default_factory=dict)
    by_category: dict[str, list[Product]] = field(default_factory=dict)
    category_by_slug: dict[str, Category] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_sku = {p.sku: p for p in self.products}
        self.category_by_slug = {c.slug: c for c in self.categories}
        self.by_category = {c.slug: [] for c in self.categories}
        for p in self.products:
            self.by_category[p.category].append(p)

    def pages(self, slug: str) -> int:
        """Number of listing pages of a category (at least 1)."""
        n = len(self.by_category[slug])
        return max(1, -(-n // self.profile.per_page))

    def listing(self, slug: str, page: int, sort: str = "") -> list[Product]:
        items = self.by_category[slug]
        if sort == "name":
            items = sorted(items, key=lambda p: (p.title.casefold(), p.sku))
        per = self.profile.per_page
        return items[(page - 1) * per: page * per]

    @property
    def listing_page_count(self) -> int:
        return sum(self.pages(c.slug) for c in self.categories)


def _slugify(name: str) -> str:
    out = []
    for ch in name.lower():
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch in "éè":
            out.append("e")
        elif out and out[-1] != "-":
            out.append("-")
    return "".join(out).strip("-")


def build_catalog(profile: str | Profile = "test", seed: int | None = None) -> Catalog:
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    seed = DEFAULT_SEED if seed is None else seed
    rng = random.Random(f"demosite:{prof.name}:{seed}")
    categories = []
    for i in range(prof.categories):
        base = _CATEGORY_NAMES[i % len(_CATEGORY_NAMES)]
        name = base if i < len(_CATEGORY_NAMES) else f"{base} {i // len(_CATEGORY_NAMES) + 1}"
        categories.append(Category(slug=_slugify(name), name=name, index=i))
    products = []
    special = iter(_SPECIAL)
    for c in categories:
        for j in range(prof.products_per_category):
            sku = f"DS-{c.index + 1:02d}-{j + 1:03d}"
            title = f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} {sku[3:]}"
            description = " ".join(rng.sample(_PHRASES, 2))
            # one special product at the third position of each of the first categories
            if j == 2:
                sp = next(special, None)
                if sp is not None:
                    title, description = sp
            price = f"{rng.randint(199, 49999) / 100:.2f}"
            in_stock = rng.random() > 0.2
            products.append(Product(sku, title, price, c.slug, c.name, description, in_stock))
    # The special products must exist in every profile, even one with few categories.
    leftover = list(special)
    if leftover:
        for k, (title, description) in enumerate(leftover):
            p = products[4 + k * 2]
            products[4 + k * 2] = Product(p.sku, title, p.price, p.category, p.category_name,
                                          description, p.in_stock)
    return Catalog(prof, seed, categories, products)
