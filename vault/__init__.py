"""Secure clinical photo vault."""
