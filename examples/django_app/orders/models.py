"""Orders and what follows them: payments, shipments, refunds, coupons."""

from __future__ import annotations

from django.db import models


class Coupon(models.Model):
    code = models.CharField(max_length=20, unique=True)
    percent_off = models.PositiveSmallIntegerField()
    valid_until = models.DateTimeField()

    def __str__(self) -> str:
        return self.code


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        PAID = "paid"
        SHIPPED = "shipped"
        DELIVERED = "delivered"
        CANCELLED = "cancelled"

    number = models.CharField(max_length=16, unique=True)
    customer = models.ForeignKey("accounts.Customer", on_delete=models.PROTECT,
                                 related_name="orders")
    shipping_address = models.ForeignKey("accounts.Address", on_delete=models.PROTECT,
                                         related_name="orders")
    coupon = models.ForeignKey(Coupon, null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="orders")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    created = models.DateTimeField()
    total = models.DecimalField(max_digits=12, decimal_places=2, default=0)

    class Meta:
        ordering = ["-created"]
        indexes = [
            models.Index(fields=["status", "-created"]),
            models.Index(fields=["customer", "-created"]),
        ]

    def __str__(self) -> str:
        return self.number


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    variant = models.ForeignKey("catalog.ProductVariant", on_delete=models.PROTECT,
                                related_name="order_lines")
    quantity = models.PositiveSmallIntegerField()
    unit_price = models.DecimalField(max_digits=10, decimal_places=2)


class Payment(models.Model):
    class Method(models.TextChoices):
        CARD = "card"
        TRANSFER = "transfer"
        WALLET = "wallet"

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="payments")
    method = models.CharField(max_length=10, choices=Method.choices)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    paid_at = models.DateTimeField()
    reference = models.CharField(max_length=32, unique=True)


class Refund(models.Model):
    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="refunds")
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    reason = models.CharField(max_length=120)


class Carrier(models.Model):
    code = models.CharField(max_length=8, unique=True)
    name = models.CharField(max_length=80)

    def __str__(self) -> str:
        return self.name


class Shipment(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="shipments")
    carrier = models.ForeignKey(Carrier, on_delete=models.PROTECT, related_name="shipments")
    warehouse = models.ForeignKey("catalog.Warehouse", on_delete=models.PROTECT,
                                  related_name="shipments")
    tracking = models.CharField(max_length=32, unique=True)
    shipped_at = models.DateTimeField()


class ShipmentItem(models.Model):
    shipment = models.ForeignKey(Shipment, on_delete=models.CASCADE, related_name="items")
    line = models.ForeignKey(OrderLine, on_delete=models.CASCADE, related_name="shipment_items")
    quantity = models.PositiveSmallIntegerField()
