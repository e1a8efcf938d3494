from __future__ import annotations

from django.contrib import admin

from blog import models


@admin.register(models.Post)
class PostAdmin(admin.ModelAdmin):
    list_display = ["title", "author", "series", "published_at"]
    list_filter = ["topics", "series"]
    search_fields = ["title"]
    prepopulated_fields = {"slug": ["title"]}
    filter_horizontal = ["topics", "related_products"]


admin.site.register([models.Author, models.Series, models.Topic, models.Comment])
