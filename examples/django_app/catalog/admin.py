from __future__ import annotations

from django.contrib import admin

from catalog import models


class VariantInline(admin.TabularInline):
    model = models.ProductVariant
    extra = 0


@admin.register(models.Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "category", "brand", "price", "active"]
    list_filter = ["active", "category", "brand"]
    search_fields = ["sku", "name"]
    list_select_related = ["category", "brand"]
    inlines = [VariantInline]


@admin.register(models.Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "parent", "position"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(models.Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["product", "customer", "rating", "created"]
    list_filter = ["rating"]


admin.site.register([
    models.Brand, models.Supplier, models.Tag, models.ProductImage, models.Attribute,
    models.AttributeValue, models.ProductVariant, models.Warehouse, models.StockLevel,
    models.PriceHistory,
])
