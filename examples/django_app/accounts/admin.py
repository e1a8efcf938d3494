from __future__ import annotations

from django.contrib import admin

from accounts import models


class AddressInline(admin.TabularInline):
    model = models.Address
    extra = 0


@admin.register(models.Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["display_name", "country", "joined", "loyalty_points"]
    list_filter = ["country"]
    search_fields = ["display_name", "user__username"]
    inlines = [AddressInline]


admin.site.register([
    models.Address, models.Preference, models.Wishlist, models.LoginEvent,
    models.NewsletterSubscription,
])
