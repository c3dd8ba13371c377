"""Patients: records whose personal fields are ciphertext under the patient's key."""
