from django.db import models


class Flight(models.Model):
    number = models.CharField(max_length=16)
    created = models.DateTimeField(auto_now_add=True)
