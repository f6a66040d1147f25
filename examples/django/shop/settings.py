"""The smallest Django project that shows zdm in a team's release cycle."""
import os

SECRET_KEY = "zdm-example-not-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["orders"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "postgres",
        # a Unix socket directory
        "HOST": os.environ["ZDM_EXAMPLE_HOST"],
        "PORT": os.environ["ZDM_EXAMPLE_PORT"],
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
