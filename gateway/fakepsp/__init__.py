"""A fake, Stripe-shaped payment provider run as its own process (`python -m gateway.fakepsp`)."""

from gateway.fakepsp.app import FakePspConfig, Rates, create_app

__all__ = ["FakePspConfig", "Rates", "create_app"]
