"""Treatments: what was done to a patient and when (the retention clock uses the date)."""
