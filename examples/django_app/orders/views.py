"""Order data as JSON: recent orders, sales figures, one customer's history."""

from __future__ import annotations

from django.db.models import Count, DecimalField, ExpressionWrapper, F, Prefetch, Sum
from django.db.models.functions import TruncMonth
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404

from accounts.models import Customer
from orders.models import Order, OrderLine

_LINE_TOTAL = ExpressionWrapper(F("quantity") * F("unit_price"),
                                output_field=DecimalField(max_digits=12, decimal_places=2))


def api_recent(request: HttpRequest) -> JsonResponse:
    status = request.GET.get("status")
    orders = Order.objects.select_related("customer", "shipping_address", "coupon")
    if status:
        orders = orders.filter(status=status)
    orders = orders.prefetch_related(
        Prefetch("lines", OrderLine.objects.select_related("variant__product")))[:25]
    return JsonResponse({"orders": [
        {
            "number": o.number,
            "status": o.status,
            "customer": o.customer.display_name,
            "city": o.shipping_address.city,
            "coupon": o.coupon.code if o.coupon else None,
            "total": str(o.total),
            "lines": [{"product": line.variant.product.name, "quantity": line.quantity}
                      for line in o.lines.all()],
        }
        for o in orders
    ]})


def api_sales(request: HttpRequest) -> JsonResponse:
    """Revenue by top-level category and by month: joins across three apps."""
    lines = OrderLine.objects.exclude(order__status=Order.Status.CANCELLED)
    by_category = (lines.values(name=F("variant__product__category__name"))
                   .annotate(revenue=Sum(_LINE_TOTAL), units=Sum("quantity"),
                             orders=Count("order", distinct=True))
                   .order_by("-revenue"))
    by_month = (lines.annotate(month=TruncMonth("order__created")).values("month")
                .annotate(revenue=Sum(_LINE_TOTAL)).order_by("month"))
    return JsonResponse({
        "by_category": [{**row, "revenue": str(row["revenue"])} for row in by_category],
        "by_month": [{"month": row["month"].date().isoformat(), "revenue": str(row["revenue"])}
                     for row in by_month],
    })


def api_customer(request: HttpRequest, pk: int) -> JsonResponse:
    customer = get_object_or_404(Customer.objects.select_related("user", "preference"), pk=pk)
    orders = (customer.orders.annotate(items=Sum("lines__quantity"))
              .values("number", "status", "created", "total", "items"))
    return JsonResponse({
        "customer": customer.display_name,
        "currency": customer.preference.currency,
        "lifetime_value": str(sum((o["total"] for o in orders), start=0)),
        "orders": [{**o, "total": str(o["total"]), "created": o["created"].isoformat()}
                   for o in orders],
    })
