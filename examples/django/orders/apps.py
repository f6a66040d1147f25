from django.apps import AppConfig
from django.db.backends.signals import connection_created


def show_notices(sender, connection, **kwargs):
    # psycopg drops server NOTICEs unless asked: zdm reports progress
    # ("runs after commit", percent, ETA) through them.
    connection.connection.add_notice_handler(lambda d: print(f"NOTICE: {d.message_primary}", flush=True))


class OrdersConfig(AppConfig):
    name = "orders"

    def ready(self):
        connection_created.connect(show_notices)
