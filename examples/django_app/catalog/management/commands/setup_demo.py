"""``manage.py setup_demo``: create the database and fill it with demo data.

The data is made from a fixed seed, so every run produces the same rows with
the same primary keys, and ``paths.txt`` can name them. Running it on a filled
database changes nothing.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils.text import slugify

from accounts.models import (
    Address,
    Customer,
    LoginEvent,
    NewsletterSubscription,
    Preference,
    Wishlist,
)
from blog.models import Author, Comment, Post, Series, Topic
from catalog.models import (
    Attribute,
    AttributeValue,
    Brand,
    Category,
    PriceHistory,
    Product,
    ProductImage,
    ProductVariant,
    Review,
    StockLevel,
    Supplier,
    Tag,
    Warehouse,
)
from orders.models import Carrier, Coupon, Order, OrderLine, Payment, Refund, Shipment, ShipmentItem
from shopsite.refdata import PLACES, VOCABULARY, word

SEED = 4
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
COUNTRIES = ("DE", "FR", "GB", "IT", "NL", "PL", "SE", "ES")
TOP_CATEGORIES = ("Kitchen", "Garden", "Outdoor", "Office", "Audio", "Lighting")


class Command(BaseCommand):
    help = "Create the demo database (migrate) and fill it with deterministic data."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        if Product.objects.exists():
            self.stdout.write("demo data already present; nothing to do")
            return
        with transaction.atomic():
            counts = _seed(random.Random(SEED))
        self.stdout.write(f"demo data created: {counts['rows']} rows, "
                          f"{counts['products']} products, {counts['orders']} orders")


def _at(rng: random.Random, days: int = 540) -> datetime:
    return EPOCH + timedelta(minutes=rng.randrange(days * 24 * 60))


def _sentence(rng: random.Random, words: list[str], length: int) -> str:
    return " ".join(rng.choice(words) for _ in range(length)).capitalize() + "."


def _seed(rng: random.Random) -> dict[str, int]:
    vocabulary = list(VOCABULARY)[:5_000]
    postcodes = list(PLACES)[:2_000]
    rows = 0

    def bulk(objects: list[Any]) -> list[Any]:
        nonlocal rows
        rows += len(objects)
        return type(objects[0]).objects.bulk_create(objects)

    # catalog
    tops = bulk([Category(name=n, slug=slugify(n), position=i)
                 for i, n in enumerate(TOP_CATEGORIES)])
    leaves = bulk([Category(parent=top, name=f"{top.name} {word(rng, 2)}",
                            slug=f"{top.slug}-{i}", position=i)
                   for top in tops for i in range(5)])
    brands = bulk([Brand(name=f"{word(rng, 2).title()} {i}", slug=f"brand-{i}",
                         country=rng.choice(COUNTRIES)) for i in range(40)])
    suppliers = bulk([Supplier(name=f"{word(rng, 3).title()} Ltd", email=f"sales{i}@example.com",
                               country=rng.choice(COUNTRIES), lead_time_days=rng.randrange(1, 21))
                      for i in range(15)])
    tags = bulk([Tag(name=f"{w} {i}", slug=f"{w}-{i}")
                 for i, w in enumerate(rng.sample(vocabulary, 60))])
    products = bulk([
        Product(sku=f"SKU{i:05d}", name=" ".join(rng.sample(vocabulary, 3)),
                category=rng.choice(leaves), brand=rng.choice(brands),
                supplier=rng.choice(suppliers), description="\n\n".join(
                    _sentence(rng, vocabulary, 14) for _ in range(3)),
                price=Decimal(rng.randrange(199, 49_999)) / 100, active=rng.random() > 0.05,
                created=_at(rng))
        for i in range(600)
    ])
    through = Product.tags.through
    bulk([through(product_id=p.pk, tag_id=t.pk)
          for p in products for t in rng.sample(tags, rng.randrange(1, 4))])
    bulk([ProductImage(product=p, url=f"/media/{p.sku}-{n}.jpg", alt=p.name, position=n)
          for p in products for n in range(2)])
    attributes = bulk([Attribute(name="colour"), Attribute(name="size"),
                       Attribute(name="weight", unit="kg"), Attribute(name="power", unit="W")])
    values = bulk([AttributeValue(attribute=a, value=str(v))
                   for a in attributes for v in range(5)])
    variants = bulk([ProductVariant(product=p, sku=f"{p.sku}-{n}",
                                    price_delta=Decimal(rng.randrange(0, 2_000)) / 100)
                     for p in products for n in range(rng.randrange(1, 5))])
    through = ProductVariant.attributes.through
    bulk([through(productvariant_id=v.pk, attributevalue_id=a.pk)
          for v in variants for a in rng.sample(values, 2)])
    warehouses = bulk([Warehouse(code=f"WH{i}", city=PLACES[postcodes[i]].city)
                       for i in range(5)])
    bulk([StockLevel(variant=v, warehouse=w, quantity=rng.randrange(0, 400))
          for v in variants for w in rng.sample(warehouses, 2)])
    bulk([PriceHistory(product=p, price=p.price * Decimal(rng.choice(("0.9", "1.1"))),
                       changed_at=_at(rng)) for p in products for _ in range(2)])

    # accounts
    users = bulk([User(username=f"customer{i}", email=f"customer{i}@example.com",
                       password="!", date_joined=_at(rng)) for i in range(300)])
    customers = bulk([Customer(user=u, display_name=f"{word(rng, 2).title()} {word(rng, 3)}",
                               country=rng.choice(COUNTRIES), joined=u.date_joined,
                               loyalty_points=rng.randrange(2_000)) for u in users])
    bulk([Preference(customer=c, currency=rng.choice(("EUR", "GBP", "SEK", "PLN")),
                     marketing=rng.random() < 0.3) for c in customers])
    addresses = bulk([Address(customer=c, line1=f"{rng.randrange(1, 200)} {word(rng, 3)} St",
                              city=PLACES[code].city, postcode=code, country=c.country,
                              is_default=n == 0)
                      for c in customers
                      for n, code in enumerate(rng.sample(postcodes, rng.randrange(1, 3)))])
    wishlists = bulk([Wishlist(customer=c, name="Wishlist") for c in customers[:150]])
    through = Wishlist.products.through
    bulk([through(wishlist_id=w.pk, product_id=p.pk)
          for w in wishlists for p in rng.sample(products, rng.randrange(1, 6))])
    bulk([LoginEvent(customer=rng.choice(customers), at=_at(rng),
                     ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
          for _ in range(600)])
    bulk([NewsletterSubscription(customer=c, list_name=name, subscribed_at=_at(rng))
          for c in customers[::3] for name in ("offers", "blog")])
    bulk([Review(product=rng.choice(products), customer=rng.choice(customers),
                 rating=rng.choice((1, 2, 3, 4, 4, 5, 5, 5)),
                 title=_sentence(rng, vocabulary, 4), body=_sentence(rng, vocabulary, 30),
                 created=_at(rng)) for _ in range(1_500)])

    # orders
    coupons = bulk([Coupon(code=f"SAVE{i:02d}", percent_off=rng.choice((5, 10, 15)),
                           valid_until=_at(rng, 720)) for i in range(20)])
    carriers = bulk([Carrier(code=c, name=n) for c, n in
                     (("DHL", "DHL"), ("UPS", "UPS"), ("DPD", "DPD"), ("PN", "PostNord"))])
    by_customer: dict[int, list[Address]] = {}
    for address in addresses:
        by_customer.setdefault(address.customer_id, []).append(address)
    statuses = [s for s, _ in Order.Status.choices]
    orders = bulk([
        Order(number=f"ORD{i:06d}", customer=c, shipping_address=rng.choice(by_customer[c.pk]),
              coupon=rng.choice(coupons) if rng.random() < 0.1 else None,
              status=rng.choice(statuses), created=_at(rng))
        for i, c in enumerate(rng.choice(customers) for _ in range(1_200))
    ])
    lines = bulk([OrderLine(order=o, variant=v, quantity=rng.randrange(1, 4),
                            unit_price=v.product.price + v.price_delta)
                  for o in orders for v in rng.sample(variants, rng.randrange(1, 5))])
    totals: dict[int, Decimal] = {}
    for line in lines:
        totals[line.order_id] = (totals.get(line.order_id, Decimal(0))
                                 + line.quantity * line.unit_price)
    for order in orders:
        order.total = totals[order.pk]
    Order.objects.bulk_update(orders, ["total"])
    paid = [o for o in orders if o.status != Order.Status.PENDING]
    payments = bulk([Payment(order=o, method=rng.choice(("card", "transfer", "wallet")),
                             amount=o.total, paid_at=o.created + timedelta(minutes=5),
                             reference=f"PAY{o.pk:08d}") for o in paid])
    bulk([Refund(payment=p, amount=p.amount / 2, reason="damaged in transit")
          for p in payments[::25]])
    lines_of: dict[int, list[OrderLine]] = {}
    for line in lines:
        lines_of.setdefault(line.order_id, []).append(line)
    shipped = [o for o in paid if o.status in (Order.Status.SHIPPED, Order.Status.DELIVERED)]
    shipments = bulk([Shipment(order=o, carrier=rng.choice(carriers),
                               warehouse=rng.choice(warehouses), tracking=f"TRK{o.pk:010d}",
                               shipped_at=o.created + timedelta(days=1)) for o in shipped])
    bulk([ShipmentItem(shipment=s, line=line, quantity=line.quantity)
          for s in shipments for line in lines_of[s.order_id]])

    # blog
    authors = bulk([Author(user=u, bio=_sentence(rng, vocabulary, 20)) for u in users[:8]])
    series = bulk([Series(title=f"Series {word(rng, 3)}", slug=f"series-{i}") for i in range(5)])
    topics = bulk([Topic(name=w, slug=slugify(w)) for w in rng.sample(vocabulary, 12)])
    posts = bulk([
        Post(author=rng.choice(authors), series=rng.choice(series) if i % 3 == 0 else None,
             title=_sentence(rng, vocabulary, 6)[:-1], slug=f"post-{i}",
             body="\n\n".join(_sentence(rng, vocabulary, 25) for _ in range(6)),
             published_at=_at(rng))
        for i in range(120)
    ])
    through = Post.topics.through
    bulk([through(post_id=p.pk, topic_id=t.pk) for p in posts for t in rng.sample(topics, 2)])
    through = Post.related_products.through
    bulk([through(post_id=p.pk, product_id=pr.pk) for p in posts for pr in rng.sample(products, 3)])
    threads = bulk([Comment(post=rng.choice(posts), customer=rng.choice(customers),
                            body=_sentence(rng, vocabulary, 15), created=_at(rng))
                    for _ in range(400)])
    bulk([Comment(post=t.post, parent=t, customer=rng.choice(customers),
                  body=_sentence(rng, vocabulary, 10), created=t.created + timedelta(hours=2))
          for t in threads[::2]])
    return {"rows": rows, "products": len(products), "orders": len(orders)}
