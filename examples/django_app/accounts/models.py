"""Customers of the shop and what they keep: addresses, wishlists, preferences."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Customer(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE,
                                related_name="customer")
    display_name = models.CharField(max_length=80)
    country = models.CharField(max_length=2)
    joined = models.DateTimeField()
    loyalty_points = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["country", "joined"])]

    def __str__(self) -> str:
        return self.display_name


class Address(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="addresses")
    line1 = models.CharField(max_length=120)
    city = models.CharField(max_length=80)
    postcode = models.CharField(max_length=10, db_index=True)
    country = models.CharField(max_length=2)
    is_default = models.BooleanField(default=False)

    class Meta:
        verbose_name_plural = "addresses"

    def __str__(self) -> str:
        return f"{self.line1}, {self.city}"


class Preference(models.Model):
    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="preference")
    currency = models.CharField(max_length=3, default="EUR")
    language = models.CharField(max_length=8, default="en")
    marketing = models.BooleanField(default=False)


class Wishlist(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="wishlists")
    name = models.CharField(max_length=80)
    products = models.ManyToManyField("catalog.Product", blank=True, related_name="wishlists")

    def __str__(self) -> str:
        return self.name


class LoginEvent(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="logins")
    at = models.DateTimeField(db_index=True)
    ip = models.GenericIPAddressField()


class NewsletterSubscription(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE,
                                 related_name="subscriptions")
    list_name = models.CharField(max_length=40)
    subscribed_at = models.DateTimeField()

    class Meta:
        unique_together = [("customer", "list_name")]
