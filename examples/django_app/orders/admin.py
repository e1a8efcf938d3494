from __future__ import annotations

from django.contrib import admin

from orders import models


class LineInline(admin.TabularInline):
    model = models.OrderLine
    extra = 0
    raw_id_fields = ["variant"]


@admin.register(models.Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["number", "customer", "status", "created", "total"]
    list_filter = ["status"]
    date_hierarchy = "created"
    list_select_related = ["customer"]
    inlines = [LineInline]


admin.site.register([
    models.Coupon, models.OrderLine, models.Payment, models.Refund, models.Carrier,
    models.Shipment, models.ShipmentItem,
])
