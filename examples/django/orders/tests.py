from django.db import connection
from django.test import TestCase

from .models import Order


class MigratedSchema(TestCase):
    """`manage.py test` builds its database from template1, where zdm is
    installed, and runs every migration there: expand, wait, contract."""

    def test_the_model_reads_and_writes_the_renamed_column(self):
        o = Order.objects.create(email="new@example.com", total=1)
        self.assertEqual(Order.objects.get(pk=o.pk).email, "new@example.com")

    def test_zdm_contracted_the_rename(self):
        with connection.cursor() as c:
            c.execute("SELECT phase, next_step FROM zdm.status WHERE kind = 'rename'")
            self.assertEqual(c.fetchall(), [("contracted", "done")])
