"""Baselines the bench compares flashsale with; see app.py."""
